"""Grid expansion: names, values, baselines, content keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.plan import content_key, expand, format_float, trial_name
from orchestrator.spec import load_spec
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
    assert trial_name({"prompt": "v2", "lora.rank": 16, "training.learning_rate": 2e-4}) == "v2-r16-lr2e-4"
    assert format_float(1.5e-4) == "1.5e-4" and format_float(0.1) == "1e-1" and format_float(3e-05) == "3e-5"
    assert trial_name({"lora.alpha": 32, "model.name": "org/some-model"}) == "alpha32-some-model"


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
