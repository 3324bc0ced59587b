"""Trials that would stop a whole sweep, through real local Ray and real SQLite: a NaN, a hang, a trial that
never ends, and a trial too big for any node. Each ends only its own trial, or the sweep before it starts."""

from __future__ import annotations

import time

import pytest

from orchestrator.cli import main
from orchestrator.planning.loading import parse_spec
from orchestrator.driver.sweep import run_sweep
from results.store import Store
from tests.conftest import tiny_spec
from tests.test_faults import write_spec


@pytest.fixture
def raw(tiny_model_dir, local_data, tmp_path) -> dict:
    spec = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    spec["search"]["baselines"] = False
    spec["training"]["max_steps"] = 3  # scripted: 0.4 s a step
    return spec


def run_with(backend, monkeypatch, raw: dict, trial_fn: str):
    monkeypatch.setattr(backend, "trial_fn", f"tests.faults:{trial_fn}")
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    start = time.monotonic()
    outcome = run_sweep(spec, store, backend, show_progress=False)
    trials = {t.name: t for t in store.summary("tiny").trials}
    return outcome, trials, store, time.monotonic() - start


def test_a_nan_loss_fails_only_its_trial_and_keeps_its_curve(backend, raw, monkeypatch):
    outcome, trials, store, _ = run_with(backend, monkeypatch, raw, "diverges_for_v2")
    assert outcome.completed == ["v1"] and outcome.failed == ["v2"]  # the sweep went on
    assert trials["v2"].status == "failed" and trials["v2"].error == "diverged at step 3 (loss nan)"
    assert store.curves(trials["v2"].id) == [("train/loss", 1, 2.0), ("train/loss", 2, 1.5)]  # kept up to it


def test_stall_timeout_ends_a_silent_trial(backend, raw, monkeypatch):
    raw["resources"] = {"stall_timeout_s": 4}
    outcome, trials, _, wall_s = run_with(backend, monkeypatch, raw, "hangs_for_v2")
    assert outcome.completed == ["v1"] and outcome.failed == ["v2"] and wall_s < 60
    assert trials["v2"].error.startswith("stalled: no event for ")
    assert "resources.stall_timeout_s=4; its worker was killed" in trials["v2"].error


def test_trial_timeout_ends_a_trial_that_never_finishes(backend, raw, monkeypatch):
    raw["resources"] = {"trial_timeout_s": 5, "stall_timeout_s": 30}  # it reports often: only the total catches it
    outcome, trials, store, wall_s = run_with(backend, monkeypatch, raw, "endless_for_v2")
    assert outcome.completed == ["v1"] and outcome.failed == ["v2"] and wall_s < 60
    assert trials["v2"].error.startswith("timed out: ran ") and "resources.trial_timeout_s=5" in trials["v2"].error
    assert trials["v2"].last_step >= 10  # it was running, and its points are kept


def test_a_trial_bigger_than_any_node_exits_2_within_seconds(backend, raw, tmp_path, capsys):
    raw["resources"] = {"cpus_per_trial": 64}
    start = time.monotonic()
    assert main(["run", str(write_spec(raw, tmp_path)), "--quiet"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "resources.cpus_per_trial: a trial must fit on one node; given 64; allowed: 1 to 2" in err
    assert Store(raw["output"]["store"]).sweep_names() == []  # nothing written
