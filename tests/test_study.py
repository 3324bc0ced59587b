"""Optuna studies through real local Ray and real SQLite: the study and the store agree trial by trial,
pruned trials keep their partial curves, and a re-run resumes the study instead of restarting it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from orchestrator.planning.loading import parse_spec
from orchestrator.search.study import SWEEP_TRIAL_ATTR
from orchestrator.driver.sweep import run_sweep
from results import leaderboard
from results.store import Store
from tests.conftest import tiny_spec

_STATE = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}


@pytest.fixture
def scripted_backend(backend, monkeypatch):
    """The session's Ray, running the stand-in trial (tests.faults.scripted) for this test."""
    monkeypatch.setattr(backend, "trial_fn", "tests.faults:scripted")
    return backend


def study_spec(tiny_model_dir, local_data, tmp_path, **optuna_settings) -> dict:
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["training"].update(max_steps=6, eval_interval_steps=2)
    raw["search"] = {"type": "optuna", "baselines": False,
                     "space": {"prompt": {"choices": ["v1", "v2"]},
                               "training.learning_rate": {"low": "1e-3", "high": "1e-1", "log": True}},
                     "optuna": {"sampler": "random", "n_trials": 6, "seed": 2, **optuna_settings}}
    raw["resources"] = {"cpus_per_trial": 2}  # one trial at a time: the pruner sees finished trials first
    return raw


def load_study(spec) -> optuna.Study:
    return optuna.load_study(study_name=spec.name, storage=spec.output.store_url())


def assert_study_matches_store(study: optuna.Study, store: Store, name: str,
                               objectives: tuple[str, ...] = ("rougeL",)) -> None:
    rows = {t.name: t for t in store.summary(name).trials if t.kind == "trial"}
    assert len(rows) == len(study.trials)  # one row per study trial, none twice
    for frozen in study.trials:
        row = rows[frozen.user_attrs[SWEEP_TRIAL_ATTR]]
        assert (row.status, row.study_trial) == (_STATE[frozen.state.name], frozen.number)
        for key, value in frozen.params.items():
            assert row.params[key] == pytest.approx(value)
        if frozen.state.name == "COMPLETE":
            assert frozen.values == pytest.approx([row.metrics[m] for m in objectives])


def test_median_pruner_stops_the_worse_prompt_and_study_agrees_with_store(
        scripted_backend, tiny_model_dir, local_data, tmp_path):
    spec = parse_spec(study_spec(tiny_model_dir, local_data, tmp_path, pruner="median", pruner_startup_trials=1))
    store = Store(spec.output.store_url())

    outcome = run_sweep(spec, store, scripted_backend, show_progress=False)

    study = load_study(spec)
    trials = {t.name: t for t in store.summary("tiny").trials}
    # Seed 2 proposes v1, v1, then v2 x 4. The v1 trials finish (0.9); each v2 reports 0.1 at step 2,
    # below the median 0.9 of the finished trials, and is stopped there.
    assert [trials[n].params["prompt"] for n in outcome.completed] == ["v1", "v1"]
    assert len(outcome.pruned) == 4 and len(study.trials) == 6
    for name in outcome.pruned:
        t = trials[name]
        assert t.params["prompt"] == "v2" and t.metrics == {} and "pruned by the median pruner" in t.error
        curve = [(n, s) for n, s, _ in store.curves(_row_id(store, name))]
        assert ("eval/rougeL", 2) in curve and t.last_step < 6  # partial curves kept, stopped early
    assert_study_matches_store(study, store, "tiny")
    board = leaderboard.build(store.summary("tiny"))
    assert {r.status for r in board} == {"completed", "pruned"}


def test_rerun_resumes_the_study_and_multi_objective_shows_pareto(
        scripted_backend, tiny_model_dir, local_data, tmp_path):
    raw = study_spec(tiny_model_dir, local_data, tmp_path,
                     objectives=[{"metric": "rougeL"}, {"metric": "gen_tokens", "direction": "minimize"}])
    raw["search"]["optuna"]["n_trials"] = 3
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    first = run_sweep(spec, store, scripted_backend, show_progress=False)
    assert len(first.completed) == 3

    raw["search"]["optuna"]["n_trials"] = 4  # a larger budget: only the missing trial runs
    again = run_sweep(parse_spec(raw), store, scripted_backend, show_progress=False)
    assert len(again.completed) == 1 and len(load_study(spec).trials) == 4
    assert_study_matches_store(load_study(spec), store, "tiny", ("rougeL", "gen_tokens"))

    rows = leaderboard.build(store.summary("tiny"))
    prompts = {r.prompt for r in rows}
    # v1: rougeL 0.9 at 10 tokens; v2: 0.1 at 5 tokens. Neither dominates the other.
    assert {r.prompt for r in rows if r.pareto} == prompts
    assert "pareto" in leaderboard.render(rows, "table", "rougeL", {}, "tiny")


def _row_id(store: Store, name: str) -> int:
    [trial] = [t for t in store.summary(store.sweep_names()[-1]).trials if t.name == name]
    return trial.id


def test_shipped_optuna_spec_runs_on_the_embedded_model(inline_backend, data_root, tmp_path, monkeypatch):
    """sweeps/optuna_tpe.yaml as shipped, on a smaller budget: real SmolLM2 (NF4), DialogSum, TPE, median pruner;
    its trials in this process (tests/inline.py)."""
    import dataclasses

    from orchestrator.planning.loading import load_spec

    monkeypatch.setenv("QLORA_SWEEP_DATA_DIR", str(data_root))
    spec = load_spec(str(Path(__file__).resolve().parents[1] / "sweeps" / "optuna_tpe.yaml"))
    small = dataclasses.replace
    spec = small(spec, dataset=small(spec.dataset, train_examples=8, eval_examples=2),
                 training=small(spec.training, max_steps=2, eval_interval_steps=1, interim_eval_examples=1),
                 generation=small(spec.generation, max_new_tokens=8),
                 search=small(spec.search, baselines=False, optuna=small(spec.search.optuna, n_trials=2)),
                 output=small(spec.output, run_dir=str(tmp_path / "runs"), store=f"sqlite:///{tmp_path / 's.db'}"))
    store = Store(spec.output.store_url())
    outcome = run_sweep(spec, store, inline_backend, show_progress=False)
    assert len(outcome.completed) == 2 and not outcome.failed  # 2 startup trials: neither can be pruned
    study = load_study(spec)
    assert_study_matches_store(study, store, "optuna_tpe")
    for t in store.summary("optuna_tpe").trials:
        names = {n for n, _, _ in store.curves(t.id)}
        assert {"eval/rougeL", "train/loss", "final/rougeL"} <= names and 1e-4 <= t.params["training.learning_rate"] <= 1e-3
    check_study_report(store.url, tmp_path)


def check_study_report(url: str, tmp_path: Path) -> None:
    """The report of a real study: overlaid curves of interim evals, Optuna's parallel coordinates and importance
    read from the stored study, and nothing cut off at 1400 or 800 pixels in Chromium."""
    from orchestrator.cli import main
    from tests.browser import drawn_at_right_edge, layout, screenshot

    report = tmp_path / "study.html"
    assert main(["report", "optuna_tpe", "--store", url, "--out", str(report)]) == 0
    html = report.read_text(encoding="utf-8")
    for chart in ("train/loss: every trial", "eval/rougeL: every trial", "eval/eval_loss: every trial",
                  "Parallel coordinates: swept settings against rougeL (2 trials)", "rougeL against generated"):
        assert chart in html, chart
    assert "Hyperparameter importance for rougeL (2 trials)" in html or "importance needs" in html
    assert "The grid" not in html  # a study has no grid to draw
    for width in (1400, 800):
        seen = layout(report, width)
        assert seen["cut"] == [] and seen["scroll"] <= width and len(seen["svgs"]) == html.count("<svg"), seen
        assert drawn_at_right_edge(screenshot(report, width)) == 0


def test_a_study_cannot_resume_with_other_objectives(tiny_model_dir, local_data, tmp_path):
    from orchestrator.search.study import StudyMismatch, check_stored_study

    spec = parse_spec(study_spec(tiny_model_dir, local_data, tmp_path))
    check_stored_study(spec, spec.output.store_url())  # no study yet: fine
    optuna.create_study(study_name="tiny", storage=spec.output.store_url(), directions=["minimize"])
    with pytest.raises(StudyMismatch, match=r"has \['minimize'\], the spec asks for \['maximize'\]"):
        check_stored_study(spec, spec.output.store_url())


def test_integer_settings_get_integer_distributions_and_infeasible_proposals_fail_with_their_reason(
        scripted_backend, tiny_model_dir, local_data, tmp_path):
    raw = study_spec(tiny_model_dir, local_data, tmp_path)
    raw["search"]["space"] = {"lora.alpha": {"low": 4, "high": 64, "log": True},  # optional integer: null default
                              "training.warmup_steps": {"low": 0, "high": 11}}  # max_steps is 6: some cannot run
    raw["prompt"] = "v1"
    raw["search"]["optuna"]["n_trials"] = 6
    raw["resources"] = {"cpus_per_trial": 1}  # two at a time: no pruner here to wait for
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    outcome = run_sweep(spec, store, scripted_backend, show_progress=False)

    study = load_study(spec)
    assert all(isinstance(t.params["lora.alpha"], int) for t in study.trials)
    rows = {t.name: t for t in store.summary("tiny").trials}
    infeasible = [t for t in study.trials if t.params["training.warmup_steps"] >= 6]
    feasible = [t for t in study.trials if t.params["training.warmup_steps"] < 6]
    assert infeasible and feasible, [t.params for t in study.trials]  # seed 2 proposes both kinds
    for frozen in infeasible:
        row = rows[frozen.user_attrs[SWEEP_TRIAL_ATTR]]
        assert frozen.state.name == "FAIL" and row.status == "failed" and row.attempts == 0  # never started
        assert row.error.startswith("infeasible settings, not run: training.warmup_steps: warm-up must end")
    assert sorted(outcome.failed) == sorted(f.user_attrs[SWEEP_TRIAL_ATTR] for f in infeasible)
    assert len(outcome.completed) == len(feasible)
    assert_study_matches_store(study, store, "tiny")


def test_the_study_lives_in_the_store_database_on_every_backend(store_url, tiny_model_dir, local_data, tmp_path):
    """Optuna's tables beside the store's, in one SQLite file or one PostgreSQL database: the median pruner
    stops the worse prompt, and the study and the store agree trial by trial (in-process, no Ray)."""
    from tests.scripted import Finish, ScriptedBackend
    from trainer.events import Metric

    def script(cfg):
        score = 0.9 if cfg.prompt == "v1" else 0.1
        return [item for step in range(1, 7) for item in (Metric("train/loss", step, 1.0 / step),
                                                           *([Metric("eval/rougeL", step, score)] if step % 2 == 0
                                                             and step < 6 else []))] + \
            [Finish({"rouge1": score, "rouge2": score / 2, "rougeL": score, "rougeLsum": score, "gen_tokens": 9.0})]

    raw = study_spec(tiny_model_dir, local_data, tmp_path, pruner="median", pruner_startup_trials=1)
    raw["output"]["store"] = store_url
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    outcome = run_sweep(spec, store, ScriptedBackend(script, cpus=2), show_progress=False)
    study = load_study(spec)
    trials = {t.name: t for t in store.summary("tiny").trials}
    assert [trials[n].params["prompt"] for n in outcome.completed] == ["v1", "v1"]  # seed 2: v1, v1, then v2 x 4
    assert [trials[n].params["prompt"] for n in outcome.pruned] == ["v2"] * 4 and len(study.trials) == 6
    assert_study_matches_store(study, store, "tiny")
    again = run_sweep(spec, Store(store_url), ScriptedBackend(script, cpus=2), show_progress=False)
    assert not again.completed and len(load_study(spec).trials) == 6  # a rerun resumes the study: nothing new
