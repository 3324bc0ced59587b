"""Grid expansion: names, values, baselines, content keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from orchestrator.planning.plan import format_float, label
from orchestrator.search.strategies import expand
from trainer.identity import content_key
from orchestrator.planning.loading import load_spec
from trainer.data import Example, TrialData

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def grid(monkeypatch, data_root):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("QLORA_SWEEP_DATA_DIR", str(data_root))
    return load_spec("grid_2x2x2.yaml")


def test_grid_2x2x2_expands_to_8_trials_and_2_baselines(grid):
    plan = expand(grid)
    trials = [t for t in plan if t.kind == "trial"]
    assert len(trials) == 8 and len({t.name for t in plan}) == 10
    assert [t.name for t in plan if t.kind == "baseline"] == ["v1-zero-shot", "v2-zero-shot"]
    combos = {(t.config.prompt, t.config.lora.rank, t.config.training.learning_rate) for t in trials}
    assert combos == {(p, r, lr) for p in ("v1", "v2") for r in (8, 16) for lr in (5e-4, 2e-4)}
    named = {t.name: t for t in plan}
    v2 = named["v2-r16-lr2e-4"].config
    assert (v2.prompt, v2.lora.rank, v2.training.learning_rate) == ("v2", 16, 2e-4)
    assert v2.prompt_template == grid.prompts["v2"] and not v2.zero_shot
    assert named["v1-zero-shot"].config.zero_shot and named["v1-zero-shot"].config.prompt == "v1"


def test_unswept_settings_are_shared(grid):
    plan = expand(grid)
    assert {t.config.training.max_steps for t in plan} == {32}
    assert {(t.config.training.micro_batch_size, t.config.training.gradient_accumulation_steps) for t in plan} == {(2, 2)}
    assert {t.config.training.seed for t in plan} == {42}


def test_names_and_float_labels():
    assert [label("prompt", "v2"), label("lora.rank", 16), label("training.learning_rate", 2e-4)] == ["v2", "r16", "lr2e-4"]
    assert format_float(1.5e-4) == "1.5e-4" and format_float(0.1) == "1e-1" and format_float(3e-05) == "3e-5"
    assert [label("lora.alpha", 32), label("model.name", "org/some-model")] == ["alpha32", "some-model"]


def test_model_axis_gets_a_baseline_per_model(grid):
    spec = dataclasses.replace(grid, search=dataclasses.replace(
        grid.search, grid={"model.name": ["a/m1", "b/m2"], "lora.rank": [4, 8]}), prompt="v1")
    names = [t.name for t in expand(spec)]
    assert names[-2:] == ["v1-m1-zero-shot", "v1-m2-zero-shot"] and len(names) == 6


def test_content_key_depends_on_config_and_data(grid):
    plan = expand(grid)
    data = TrialData((Example("a", "d", "s", ("s",)),), (Example("b", "d2", "s2", ("s2",)),), ("summary",))
    other = dataclasses.replace(data, eval=(Example("b", "d2", "other", ("other",)),))
    keys = {content_key(t.config, data) for t in plan}
    assert len(keys) == 10
    assert content_key(plan[0].config, data) == content_key(plan[0].config, data)
    assert content_key(plan[0].config, data) != content_key(plan[0].config, other)


def test_settings_added_later_keep_stored_keys_at_their_defaults_and_change_them_otherwise(grid):
    import hashlib
    import json

    config = expand(grid)[0].config
    data = TrialData((Example("a", "d", "s", ("s",)),), (Example("b", "d2", "s2", ("s2",)),), ("summary",))
    before = {"config": dataclasses.asdict(config), "data": dataclasses.asdict(data), "model": None}
    for section, names in (("training", ("epochs", "warmup_ratio", "optimizer", "keep_final_checkpoint")),
                           ("augmentation", ("paraphrase", "paraphrase_model", "paraphrase_prompt")),
                           ("dataset", ("encoding", "eval_overlap"))):
        for name in names:  # the payload as stores written before these settings hashed it
            del before["config"][section][name]
    del before["config"]["warm_start"]  # added with clone and extend; keep_final_checkpoint never counts
    del before["data"]["paraphrased"], before["data"]["paraphrase_source"]
    stored = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()
    assert content_key(config, data) == stored  # an upgrade does not re-run finished trials
    kept = dataclasses.replace(config, training=dataclasses.replace(config.training, keep_final_checkpoint=True))
    assert content_key(kept, data) == stored  # what a trial keeps on disk is not what it computes
    eight_bit = dataclasses.replace(config, training=dataclasses.replace(config.training, optimizer="adamw_8bit"))
    paraphrased = dataclasses.replace(data, paraphrased=data.train, paraphrase_source="gen")
    assert len({stored, content_key(eight_bit, data), content_key(config, paraphrased)}) == 3


def test_labels_that_would_collide_are_made_distinct_and_path_safe(grid):
    def names(grid_values: dict) -> list[str]:
        spec = dataclasses.replace(grid, search=dataclasses.replace(grid.search, grid=grid_values), prompt="v1")
        return [t.name for t in expand(spec) if t.kind == "trial"]

    assert names({"training.learning_rate": [1.00001e-4, 1.00002e-4]}) == ["lr1.00001e-4", "lr1.00002e-4"]
    two_models = names({"model.name": ["/a/org/model", "/b/org/model"]})
    assert len(set(two_models)) == 2 and all(n.startswith("model~") for n in two_models)
    assert names({"lora.target_modules": [["q_proj", "v_proj"], "all-linear"]}) == [
        "target_modulesq_proj+v_proj", "target_modulesall-linear"]
    assert names({"model.name": ["../../x y/weird$name"]}) == ["weird_name"]
    for name in two_models + names({"training.learning_rate": [1.00001e-4]}):
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.~+-]*", name)


def test_baselines_are_keyed_by_everything_a_zero_shot_run_depends_on(grid):
    spec = dataclasses.replace(grid, search=dataclasses.replace(grid.search, grid={
        "quantization.mode": ["nf4", "none"], "lora.rank": [4, 8], "training.max_seq_length": [256, 384]}),
        prompt="v2")
    plan = expand(spec)
    baselines = [t for t in plan if t.kind == "baseline"]
    assert [b.name for b in baselines] == ["v2-modenf4-max_seq_length256-zero-shot",
                                           "v2-modenf4-max_seq_length384-zero-shot",
                                           "v2-modenone-max_seq_length256-zero-shot",
                                           "v2-modenone-max_seq_length384-zero-shot"]  # rank does not matter
    for t in plan:
        if t.kind == "trial":
            own = next(b for b in baselines if b.name == t.baseline)
            assert own.config.quantization == t.config.quantization
            assert own.config.training.max_seq_length == t.config.training.max_seq_length


def test_trial_folders_never_leave_the_sweep_folder(tmp_path):
    from orchestrator.driver.sweep import trial_dir

    assert trial_dir(tmp_path, "v1-r8") == (tmp_path / "trials" / "v1-r8").resolve()
    for bad in ("../escaped", "a/b", ".."):
        with pytest.raises(ValueError, match="outside"):
            trial_dir(tmp_path, bad)


def test_training_rows_do_not_split_baselines(grid):
    spec = dataclasses.replace(grid, search=dataclasses.replace(grid.search, grid={
        "dataset.train_examples": [16, 32], "dataset.train_split": ["validation", "train"]}), prompt="v1")
    plan = expand(spec)
    assert [t.name for t in plan if t.kind == "baseline"] == ["v1-zero-shot"]
    assert {t.baseline for t in plan if t.kind == "trial"} == {"v1-zero-shot"}
