"""The embedded GGUF model cache and the DialogSum mirror."""

from __future__ import annotations

import torch

from trainer.config import DatasetConfig
from trainer.data import load_trial_data, split_source
from trainer.models import EMBEDDED_GGUF_FILE, convert_gguf, embedded_gguf_dir, model_problem


def test_gguf_conversion_matches_the_gguf_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path / "smollm2"
    convert_gguf(embedded_gguf_dir(), EMBEDDED_GGUF_FILE, target)
    assert (target / "model.safetensors").exists() and (target / "chat_template.jinja").exists()
    cached = AutoModelForCausalLM.from_pretrained(target)
    original = AutoModelForCausalLM.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_FILE)
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
    with pytest.raises(ValueError, match=r"2 of 6 do not, the first is row 1 .*dataset.empty_rows: skip"):
        load_trial_data(DatasetConfig(**{**cfg.__dict__, "empty_rows": "error"}))
