"""The embedded GGUF model cache and the DialogSum mirror."""

from __future__ import annotations

import os

import pytest
import torch

from trainer.config import DatasetConfig
from trainer.data import load_trial_data, split_source
from trainer.models import EMBEDDED_GGUF_FILE, convert_gguf, embedded_gguf_dir, model_problem


@pytest.mark.slow  # loads the real SmolLM2 from its GGUF (~18 s)
def test_gguf_conversion_matches_the_gguf_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path / "smollm2"
    original = AutoModelForCausalLM.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_FILE)
    convert_gguf(embedded_gguf_dir(), EMBEDDED_GGUF_FILE, target, original)  # loaded once: it takes ~18 s
    assert (target / "model.safetensors").exists() and (target / "chat_template.jinja").exists()
    cached = AutoModelForCausalLM.from_pretrained(target)
    tokens = AutoTokenizer.from_pretrained(target)("#Person1#: Hello there.", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(cached(**tokens).logits, original(**tokens).logits, atol=1e-5)


def test_model_problems():
    assert model_problem("smollm2-135m-instruct") is None
    assert "no model directory" in model_problem("./nowhere/model")
    assert model_problem("some-org/some-model") is None  # a hub id: checked when loaded


def test_dialogsum_mirror_eval_uses_numbered_references(data_root):
    cfg = DatasetConfig(mirror_dir=str(data_root), train_examples=5, eval_examples=3, sample_seed=1)
    assert split_source(cfg, "eval").path == data_root / "dialogsum" / "test.jsonl"
    data = load_trial_data(cfg)
    assert data.reference_columns == ("summary1", "summary2", "summary3")
    assert len(data.train) == 5 and len(data.eval) == 3
    assert all(len(e.references) == 3 and e.summary == e.references[0] for e in data.eval)
    assert {e.id for e in data.eval}.isdisjoint({e.id for e in data.train})
    assert load_trial_data(cfg) == data  # the same seeded subset every time
    other = load_trial_data(DatasetConfig(mirror_dir=str(data_root), eval_examples=3, train_examples=5, sample_seed=2))
    assert [e.id for e in other.eval] != [e.id for e in data.eval]


def test_missing_mirror_falls_back_to_the_hub_id(tmp_path):
    source = split_source(DatasetConfig(name="samsum", mirror_dir=str(tmp_path)), "train")
    assert (source.path, source.hub_id, source.split) == (None, "knkarthick/samsum", "validation")


def _csv(path, rows: list[dict]):
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_mapped_csv_columns_and_empty_rows_skipped_with_a_count(tmp_path):
    import pytest

    rows = [{"key": f"k{i}", "chat": f"A: hi {i}\nB: hello", "gist": f"A greets B {i}.", "gist2": "B answers."}
            for i in range(6)]
    rows[1]["chat"] = "  "          # empty dialogue
    rows[2]["gist"] = ""            # no training summary (train) but gist2 stays (eval)
    train = _csv(tmp_path / "train.csv", rows)
    evals = _csv(tmp_path / "eval.csv", [dict(r, gist="", gist2="") if i == 3 else r for i, r in enumerate(rows)])
    cfg = DatasetConfig(name=None, train_file=str(train), eval_file=str(evals), dialogue_column="chat",
                        summary_column="gist", reference_columns=["gist", "gist2"], train_examples=10, eval_examples=10)
    data = load_trial_data(cfg)
    assert data.skipped_rows == (2, 2)  # train: rows 1 and 2; eval: row 1 (dialogue) and row 3 (both refs)
    assert len(data.train) == 4 and len(data.eval) == 4
    assert [e.references for e in data.eval if e.dialogue.endswith("hi 2\nB: hello")] == [("B answers.",)]
    with pytest.raises(ValueError, match=r"2 of 6 rows without, the first row 1 .*dataset.empty_rows: skip"):
        load_trial_data(DatasetConfig(**{**cfg.__dict__, "empty_rows": "error"}))


def test_model_identity_follows_the_weight_files(tmp_path, monkeypatch):
    from trainer.identity import content_key
    from trainer.config import TrialConfig
    from trainer.data import Example, TrialData
    from trainer.models import model_identity

    monkeypatch.setenv("QLORA_SWEEP_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights v1")
    data = TrialData((Example("a", "d", "s", ("s",)),), (Example("b", "d", "s", ("s",)),), ("summary",))
    before = model_identity(str(model))
    assert set(before["files"]) == {"config.json", "model.safetensors"}
    (model / "model.safetensors").write_bytes(b"weights v2")  # same name, same size, other weights
    stat = (model / "model.safetensors").stat()  # a later write: a later mtime, even on a coarse-clock filesystem
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = model_identity(str(model))
    assert after != before
    assert content_key(TrialConfig(), data, before) != content_key(TrialConfig(), data, after)
