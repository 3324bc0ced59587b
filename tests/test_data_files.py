"""Users' data files as they really are: Excel's BOM, Korean Windows encodings, broken JSONL and CSV lines,
train/eval leakage and files with fewer rows than asked. Each bad file exits 2 naming the file, the line, what
was found and the fix, with every problem at once and nothing written."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.planning.loading import parse_spec
from orchestrator.planning.prepare import prepare, sweep_notes
from sweeps.spec import SpecError
from tests.conftest import tiny_spec, write_jsonl
from tests.test_spec import KOREAN_DEV_ROWS, KOREAN_ROWS
from trainer import datafiles
from trainer.config import DatasetConfig
from trainer.data import load_trial_data

KOREAN_ENCODINGS = ("cp949", "euc-kr")


def _korean_csv(path: Path, rows: list[tuple[str, str]], encoding: str, bom: bool = False) -> Path:
    lines = [["fname", "dialogue", "summary"]] + [[f"{path.stem}_{i}", d, s] for i, (d, s) in enumerate(rows)]
    text = _csv_text(lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return path


def _csv_text(lines: list[list[str]]) -> str:
    import io

    out = io.StringIO(newline="")
    csv.writer(out).writerows(lines)
    return out.getvalue()


def _spec_file(folder: Path, model: Path, train: Path, evals: Path, **dataset) -> Path:
    raw = tiny_spec(model, train, evals, folder)
    raw["dataset"].update(dataset)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _problems(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return [p.render() for p in info.value.problems]


def test_excel_bom_and_korean_windows_encodings_read_the_same_rows(tmp_path):
    utf8 = load_trial_data(DatasetConfig(name=None, train_file=str(_korean_csv(tmp_path / "t.csv", KOREAN_ROWS, "utf-8")),
                                         eval_file=str(_korean_csv(tmp_path / "e.csv", KOREAN_DEV_ROWS, "utf-8"))))
    assert len(utf8.train) == 2 and "회의" in utf8.train[0].dialogue
    for encoding, bom in (("utf-8", True), *((e, False) for e in KOREAN_ENCODINGS)):
        folder = tmp_path / f"{encoding}-{bom}"
        folder.mkdir()
        train = _korean_csv(folder / "t.csv", KOREAN_ROWS, encoding, bom)
        evals = _korean_csv(folder / "e.csv", KOREAN_DEV_ROWS, encoding, bom)
        read = datafiles.read_file(train)
        assert read.columns == ("fname", "dialogue", "summary")  # no "\ufefffname"
        assert read.detected == (encoding != "utf-8") and read.encoding in {"utf-8", "cp949"}
        assert load_trial_data(DatasetConfig(name=None, train_file=str(train), eval_file=str(evals))) == utf8
        named = DatasetConfig(name=None, train_file=str(train), eval_file=str(evals), encoding=encoding)
        assert load_trial_data(named) == utf8


def test_detected_encoding_is_named_by_plan_and_a_wrong_one_exits_2_with_offset_and_fix(
        tmp_path, tiny_model_dir, capsys):
    train = _korean_csv(tmp_path / "train.csv", KOREAN_ROWS, "cp949")
    evals = _korean_csv(tmp_path / "dev.csv", KOREAN_DEV_ROWS, "euc-kr")
    assert main(["plan", str(_spec_file(tmp_path, tiny_model_dir, train, evals))]) == 0
    out = capsys.readouterr().out
    assert "train.csv: 2 rows, 2 usable, 2 used" in out and "read as cp949 (detected)" in out

    assert main(["validate", str(_spec_file(tmp_path, tiny_model_dir, train, evals, encoding="utf-8"))]) == 2
    err = capsys.readouterr().err
    first_byte = min(i for i, b in enumerate(train.read_bytes()) if b >= 0x80)
    assert f"dataset.train_file ({train}, line 2)" in err and f"at byte offset {first_byte}" in err
    assert "must decode as utf-8" in err and "dataset.encoding" in err and "Traceback" not in err
    assert f"dataset.eval_file ({evals}, line 2)" in err  # both files at once

    assert main(["validate", str(_spec_file(tmp_path, tiny_model_dir, train, evals, encoding="klingon"))]) == 2
    assert "dataset.encoding: must name a text encoding Python knows; given 'klingon'" in capsys.readouterr().err


def test_a_utf8_file_with_one_broken_byte_is_reported_not_guessed(tmp_path):
    train = tmp_path / "train.csv"
    text = _csv_text([["dialogue", "summary"], ["A: 안녕\nB: 네", "인사"], ["A: 밥\nB: 응", "식사"]])
    raw = text.encode("utf-8")
    broken = raw.index("밥".encode())  # its second byte becomes 0xff: the sequence from here is invalid
    train.write_bytes(raw[:broken + 1] + b"\xff" + raw[broken + 2:])
    read = datafiles.read_file(train)
    assert read.rows == () and len(read.problems) == 1
    problem = read.problems[0]
    assert problem.line == 4 and f"byte 0x{raw[broken]:02x} at byte offset {broken}" in problem.found and "utf-8" in problem.invariant


def test_broken_jsonl_and_csv_lines_are_all_reported_at_once_and_nothing_is_written(
        tmp_path, tiny_model_dir, local_data, capsys):
    good_train, evals = local_data
    lines = good_train.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:-10]  # cut short
    lines.insert(5, "[1, 2]")  # valid JSON, not an object
    lines.append('{"id": "x", "dialogue": "A: hi\nB: hello", "summary": "s"}')  # a raw newline inside a string
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = _spec_file(tmp_path, tiny_model_dir, broken, evals)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    for line, what in ((3, "Unterminated string"), (6, "a JSON list"), (10, "Unterminated string"),
                       (11, "Expecting value")):
        assert f"dataset.train_file ({broken}, line {line}): every line must be one JSON object" in err, err
        assert what in err.split(f"line {line})")[1].split("\n")[0]
    assert "Fix: fix or remove line 3" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # the store and the run folder live there: nothing was written

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('dialogue,summary\n"A: hi\nB: yo",greets\nA: a, b,c,d\nA: lonely\n"A: "quoted" late",x\n'
                       '"A: fine",ok\n"A: never closed,x\nmore,text\n', encoding="utf-8")
    assert main(["validate", str(_spec_file(tmp_path, tiny_model_dir, bad_csv, evals))]) == 2
    err = capsys.readouterr().err
    assert f"({bad_csv}, line 4): every row must have the header's 2 fields; given \"4, the extra ones 'c, d'\"" in err
    assert f"({bad_csv}, line 5): every row must have the header's 2 fields; given \"1: 'A: lonely'\"" in err
    assert f"({bad_csv}, line 6): a quoted field must end at its closing quote" in err
    assert f"({bad_csv}, line 8): every quoted field must be closed" in err and "close the quote in line 8" in err
    assert "line 2)" not in err and "line 7)" not in err  # the good rows


def test_many_broken_lines_are_counted_after_the_first_ten(tmp_path, tiny_model_dir, local_data):
    good_train, evals = local_data
    broken = write_jsonl(tmp_path / "b.jsonl", [])
    broken.write_text(good_train.read_text() + "not json\n" * 25, encoding="utf-8")
    raw = tiny_spec(tiny_model_dir, broken, evals, tmp_path)
    found = _problems(raw)
    assert len(found) == 11 and "15 more broken lines: 19, 20," in found[-1]


def test_an_eval_row_that_is_a_training_row_is_refused_unless_allowed_and_then_counted(
        tmp_path, tiny_model_dir, local_data):
    train, evals = local_data
    raw = tiny_spec(tiny_model_dir, train, train, tmp_path)
    (same,) = _problems(raw)
    assert same.startswith("dataset.eval_overlap: a scored eval row must not be a training row")
    assert "4 of 4 scored eval rows" in same and f"({train} is also the training file" in same
    assert re.search(r"whitespace ignored\): d\d, d\d, d\d, d\d'", same)
    assert "set dataset.eval_overlap: allow" in same

    rows = [json.loads(line) for line in evals.read_text().splitlines()]
    copied = [json.loads(line) for line in train.read_text().splitlines()][:3]
    for row in copied:
        row["dialogue"] = "  " + row["dialogue"].replace("\n", " \n  ") + "\n"  # whitespace does not hide a copy
        row["id"] += "-copy"
    leaky = write_jsonl(tmp_path / "leaky.jsonl", rows + copied)
    raw = tiny_spec(tiny_model_dir, train, leaky, tmp_path)
    raw["dataset"]["eval_examples"] = 10
    (found,) = _problems(raw)
    assert "3 of 7 scored eval rows" in found and "d0-copy, d1-copy, d2-copy" in found
    assert "leaky.jsonl against" in found and "remove those rows" in found

    raw["dataset"]["eval_overlap"] = "allow"
    spec = parse_spec(raw)
    notes = sweep_notes(prepare(spec)[1], spec)
    assert notes["eval_overlap"] == "allowed (dataset.eval_overlap): 3 of 7 scored eval rows are also training rows"


def test_the_shipped_mirror_shares_six_dialogues_between_its_splits_which_only_a_full_eval_set_scores(data_root):
    from orchestrator.planning.datachecks import data_problems

    assert data_problems(DatasetConfig(mirror_dir=str(data_root))) == []  # 40 scored, none in validation
    (full,) = data_problems(DatasetConfig(mirror_dir=str(data_root), eval_examples=500))
    assert "6 of 500 scored eval rows" in full.given and "test_59, test_63, test_112, test_410, test_462, ..." in full.given


def test_fewer_rows_than_asked_are_stated_by_plan_and_the_leaderboard_notes(tmp_path, tiny_model_dir, local_data,
                                                                            capsys):
    train, evals = local_data
    spec_path = _spec_file(tmp_path, tiny_model_dir, train, evals, train_examples=400, eval_examples=50)
    assert main(["plan", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert f"train {train}: 8 rows, 8 usable, 8 used, fewer than dataset.train_examples: 400" in out
    assert f"eval {evals}: 4 rows, 4 usable, 4 used, fewer than dataset.eval_examples: 50" in out
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    notes = sweep_notes(prepare(spec)[1], spec)
    assert notes["train_examples"] == "8 (all usable rows; 400 asked)"
    assert notes["eval_examples"] == "4 (all usable rows; 50 asked)"


def test_every_dataset_a_grid_uses_is_checked_and_each_file_is_read_once(tmp_path, tiny_model_dir, local_data,
                                                                         capsys):
    train, evals = local_data
    spec_path = _spec_file(tmp_path, tiny_model_dir, train, evals)
    raw = yaml.safe_load(spec_path.read_text())
    raw["search"]["grid"]["dataset.eval_file"] = [str(evals), str(train)]  # the second point leaks
    spec_path.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(spec_path)]) == 2
    assert "dataset.eval_overlap" in capsys.readouterr().err

    raw["search"]["grid"]["dataset.eval_file"] = [str(evals)]
    spec_path.write_text(yaml.safe_dump(raw))
    datafiles._read.cache_clear()
    assert main(["plan", str(spec_path)]) == 0
    spec = parse_spec(raw)
    prepare(spec)
    assert datafiles._read.cache_info().misses == 2  # validate, plan and prepare: each file decoded once
