"""The trial lifecycle: every legal transition reaches every sink once, an illegal one raises, and the driver
moves trials through it (fail, retry, diverge, prune, stop, time out, reuse, abort) with real SQLite and a real
Optuna study, in-process on a scripted backend (no Ray, no model)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import optuna
import pytest

from orchestrator.driver.lifecycle import TRANSITIONS, Change, IllegalTransition, Lifecycle, Trial
from orchestrator.planning.loading import parse_spec
from orchestrator.planning.plan import PlannedTrial
from orchestrator.driver.sweep import run_sweep
from results.states import TrialState as S
from results.store import Store
from tests.conftest import tiny_spec
from tests.scripted import HANG, Fail, Finish, ScriptedBackend
from trainer import events as ev
from trainer.config import TrialConfig

SCORES = {"rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.25, "rougeLsum": 0.25, "gen_tokens": 7.0, "gen_words": 6.0}


class Recorder:
    """A sink that keeps every change it saw, per trial name."""

    def __init__(self):
        self.changes: list[Change] = []

    def on_transition(self, change: Change) -> None:
        self.changes.append(change)

    def path(self, name: str) -> list[str]:
        return [change.new.value for change in self.changes if change.trial.name == name]


def _trial(state: S) -> Trial:
    return Trial(1, PlannedTrial("t", "trial", {}, TrialConfig()), state=state)


LEGAL = [(old, new) for old, targets in TRANSITIONS.items() for new in sorted(targets)]
ILLEGAL = [(old, new) for old in S for new in S if new not in TRANSITIONS[old]]


@pytest.mark.parametrize("old, new", LEGAL, ids=lambda s: s.value)
def test_every_legal_transition_reaches_each_sink_once(old, new):
    sinks = [Recorder(), Recorder(), Recorder()]
    trial = _trial(old)
    change = Lifecycle(sinks).transition(trial, new, reason="why")
    assert trial.state is new and (change.old, change.new, change.reason) == (old, new, "why")
    assert all(sink.changes == [change] for sink in sinks)


@pytest.mark.parametrize("old, new", ILLEGAL, ids=lambda s: s.value)
def test_an_illegal_transition_raises_and_no_sink_sees_it(old, new):
    sink, trial = Recorder(), _trial(old)
    with pytest.raises(IllegalTransition, match=f"from {old.value} to .*asked to move to {new.value}"):
        Lifecycle([sink]).transition(trial, new)
    assert trial.state is old and sink.changes == []


def test_the_lifecycle_has_every_state_and_ends_only_in_final_ones():
    assert set(TRANSITIONS) == set(S)
    # A trial ends in a final state; only a stopped one can be asked back (`sweep resume`).
    assert {s for s, targets in TRANSITIONS.items() if not targets} == {s for s in S if s.final} - {S.INTERRUPTED}
    assert TRANSITIONS[S.INTERRUPTED] == {S.PENDING}
    assert len(ILLEGAL) > len(LEGAL) > 10  # both parametrized walks above are real


@pytest.fixture
def raw(tiny_model_dir, local_data, tmp_path) -> dict:
    return tiny_spec(tiny_model_dir, *local_data, tmp_path)


def _grid_script(config: TrialConfig) -> list:
    """v1-r4 completes, v1-r8 raises, v2-r4 runs out of memory above micro batch 1, v2-r8 diverges at step 2."""
    if config.zero_shot:
        return [ev.Phase("evaluate"), Finish(SCORES)]
    case = (config.prompt, config.lora.rank)
    if case == ("v1", 8):
        return [ev.Metric("train/loss", 1, 2.0), Fail("ValueError: boom")]
    if case == ("v2", 4) and config.training.micro_batch_size > 1:
        return [ev.Metric("train/loss", 1, 9.0), Fail("CUDA out of memory", ev.FailureKind.OUT_OF_MEMORY)]
    if case == ("v2", 8):
        return [ev.Metric("train/loss", 1, 2.0), ev.Metric("train/loss", 2, math.nan), HANG]
    return [ev.Phase("train"), ev.Metric("train/loss", 1, 2.0), ev.Metric("train/loss", 2, 1.5),
            ev.Checkpoint(2), ev.Phase("evaluate"), Finish(SCORES)]


def test_a_grid_completes_fails_retries_diverges_and_is_reused_on_the_next_run(raw):
    raw["search"]["grid"]["lora.rank"] = [4, 8]
    raw["resources"] = {"retry_out_of_memory": True}
    spec = parse_spec(raw)
    store, backend, seen = Store(spec.output.store_url()), ScriptedBackend(_grid_script), Recorder()

    outcome = run_sweep(spec, store, backend, show_progress=False, sinks=[seen])

    assert sorted(outcome.completed) == ["v1-r4", "v1-zero-shot", "v2-r4", "v2-zero-shot"]
    assert sorted(outcome.failed) == ["v1-r8", "v2-r8"] and not outcome.pruned and not outcome.interrupted
    assert seen.path("v1-r4") == ["submitted", "running", "completed"]
    assert seen.path("v1-r8") == ["submitted", "running", "failed"]
    assert seen.path("v2-r4") == ["submitted", "running", "pending", "submitted", "running", "completed"]
    assert seen.path("v2-r8") == ["submitted", "running", "failed"]
    trials = {t.name: t for t in store.summary("tiny").trials}
    assert {n: t.status for n, t in trials.items()} == {n: s.value for n, s in outcome.ended.items()}
    assert trials["v1-r8"].error == "ValueError: boom"
    assert trials["v2-r8"].error == "diverged at step 2 (loss nan)"
    assert trials["v2-r4"].attempts == 2 and "micro_batch_size=1, gradient_accumulation_steps=2" in trials["v2-r4"].error
    assert [c.training.micro_batch_size for k, c in backend.submitted if k == trials["v2-r4"].id] == [2, 1]
    assert trials["v1-r4"].metrics == SCORES and trials["v1-r4"].baseline == "v1-zero-shot"
    losses = [(step, v) for n, step, v in store.curves(trials["v2-r4"].id) if n == "train/loss"]
    assert losses == [(1, 2.0), (2, 1.5)]  # the retry's curve only: the first attempt's 9.0 was dropped
    assert _with_hparams(spec) == set(outcome.completed)  # HParamsSink: completed trials only

    again = Recorder()
    rerun = run_sweep(spec, store, ScriptedBackend(lambda c: [Finish(SCORES)]), show_progress=False, sinks=[again])
    assert sorted(rerun.reused) == sorted(outcome.completed)  # kept, not run
    assert sorted(rerun.completed) == ["v1-r8", "v2-r8"]  # what failed runs again
    assert all(again.path(name) == ["reused"] for name in outcome.completed)


def _with_hparams(spec) -> set[str]:
    """Trials whose TensorBoard run holds the final metrics the HParams view reads."""
    runs = Path(spec.output.run_dir).resolve() / spec.name / "tensorboard"
    return {run.name for run in runs.iterdir()
            if any(b"hparams/rougeL" in f.read_bytes() for f in run.glob("events.out.tfevents.*"))}


def _assert_first_completed_and_the_rest_pruned(outcome, store: Store, reason: str):
    """One trial completed, two pruned with `reason`, and the study agrees; returns the study."""
    assert len(outcome.completed) == 1 and len(outcome.pruned) == 2
    trials = {t.name: t for t in store.summary("tiny").trials}
    for name in outcome.pruned:
        assert trials[name].error == reason
    study = optuna.load_study(study_name="tiny", storage=store.url)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "PRUNED", "PRUNED"]
    return study


def _three_trial_study(raw: dict, eval_interval_steps: int, **pruning):
    """A random-sampler study of 3 trials over lora.rank, 4 steps each, pruned as `pruning` says."""
    raw["search"] = {"type": "optuna", "baselines": False, "space": {"lora.rank": {"choices": [4, 8, 16]}},
                     "optuna": {"sampler": "random", "n_trials": 3, **pruning}}
    raw["training"].update(max_steps=4, eval_interval_steps=eval_interval_steps)
    raw["prompt"] = "v1"
    return parse_spec(raw)


def test_a_study_prunes_through_the_lifecycle_and_the_study_agrees(raw):
    """The first trial scores 0.9 at every interim eval, every later one 0.1: the median pruner (one startup
    trial) prunes each later one at its first interim eval."""
    spec = _three_trial_study(raw, 1, pruner="median", pruner_startup_trials=1)
    store, calls = Store(spec.output.store_url()), []

    def script(config):
        calls.append(config)
        score = 0.9 if len(calls) == 1 else 0.1
        interim = [ev.Metric("eval/rougeL", step, score) for step in (1, 2, 3)]
        return [*interim, HANG] if len(calls) > 1 else [*interim, Finish({**SCORES, "rougeL": score})]

    outcome = run_sweep(spec, store, ScriptedBackend(script, cpus=1), show_progress=False)

    _assert_first_completed_and_the_rest_pruned(outcome, store, "pruned by the median pruner at step 1: "
                                                                "eval/rougeL=0.1000")


def test_stops_interrupt_one_trial_then_the_sweep_and_its_queue(raw):
    raw["search"]["grid"]["lora.rank"] = [4, 8]
    raw["search"]["baselines"] = False
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())

    class StopWhenRunning(Recorder):  # another terminal's `sweep stop`, timed by the lifecycle itself
        def on_transition(self, change):
            super().on_transition(change)
            if change.new is S.RUNNING and change.trial.name == "v1-r4":
                store.control.request_stop("tiny", "v1-r4")
            elif change.new is S.RUNNING and change.trial.name == "v1-r8":
                store.control.request_stop("tiny")

    seen = StopWhenRunning()
    outcome = run_sweep(spec, store, ScriptedBackend(lambda c: [HANG], cpus=1), show_progress=False, sinks=[seen])

    trials = {t.name: (t.status, t.error) for t in store.summary("tiny").trials}
    assert trials == {"v1-r4": ("interrupted", "stopped by `sweep stop` for this trial"),
                      "v1-r8": ("interrupted", "stopped by `sweep stop`"),
                      "v2-r4": ("interrupted", "stopped by `sweep stop`"),
                      "v2-r8": ("interrupted", "stopped by `sweep stop`")}
    assert outcome.stopped_by == "stopped by `sweep stop`" and sorted(outcome.interrupted) == sorted(trials)
    assert seen.path("v2-r4") == ["interrupted"]  # queued, never submitted
    assert store.summary("tiny").driver is None


def test_a_silent_trial_fails_as_stalled_and_the_next_one_runs(raw):
    raw["search"]["baselines"] = False
    raw["resources"] = {"stall_timeout_s": 0.3}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    script = {"v1": [ev.Metric("train/loss", 1, 2.0), HANG], "v2": [Finish(SCORES)]}

    outcome = run_sweep(spec, store, ScriptedBackend(lambda c: script[c.prompt], cpus=1), show_progress=False)

    assert outcome.failed == ["v1"] and outcome.completed == ["v2"]
    [v1] = [t for t in store.summary("tiny").trials if t.name == "v1"]
    assert v1.error.startswith("stalled: no event for") and "resources.stall_timeout_s=0.3" in v1.error


def test_a_driver_that_aborts_leaves_no_trial_claiming_to_run(raw):
    raw["search"]["grid"]["lora.rank"] = [4, 8]
    raw["search"]["baselines"] = False
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())

    class Broken(ScriptedBackend):
        def drain_events(self):
            events = super().drain_events()
            if any(isinstance(e, ev.Metric) for _, e in events):
                raise RuntimeError("a bug in the driver's loop")
            return events

    with pytest.raises(RuntimeError, match="a bug"):
        run_sweep(spec, store, Broken(lambda c: [ev.Metric("train/loss", 1, 2.0), HANG], cpus=2), show_progress=False)

    states = defaultdict(list)
    for t in store.summary("tiny").trials:
        states[t.status].append(t.error)
    assert list(states) == ["interrupted"]  # two were running, two queued
    assert sorted(states["interrupted"]) == ["the driver aborted"] * 4


def test_an_interrupted_study_trial_stays_running_in_the_study_and_reruns_under_its_number(raw):
    raw["search"] = {"type": "optuna", "baselines": False, "space": {"lora.rank": {"choices": [4, 8]}},
                     "optuna": {"sampler": "grid", "n_trials": 2}}
    raw["prompt"] = "v1"
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())

    class StopWhenRunning:
        def on_transition(self, change):
            if change.new is S.RUNNING:
                store.control.request_stop("tiny")

    first = run_sweep(spec, store, ScriptedBackend(lambda c: [HANG], cpus=1), show_progress=False,
                      sinks=[StopWhenRunning()])
    [name] = first.interrupted
    [trial] = optuna.load_study(study_name="tiny", storage=store.url).trials
    assert (trial.state.name, trial.user_attrs["interrupted"], trial.user_attrs["sweep_trial"]) == \
        ("RUNNING", True, name)

    again = run_sweep(spec, store, ScriptedBackend(lambda c: [Finish(SCORES)], cpus=1), show_progress=False)
    assert name in again.completed and len(again.completed) == 2  # the same number and row, then the next one
    states = {t.number: t.state.name for t in optuna.load_study(study_name="tiny", storage=store.url).trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE"}


def test_the_wilcoxon_pruner_pairs_per_example_scores_with_the_best_trial(raw):
    """The first trial beats every later one on each of 8 examples: paired, that is p = 1/256 at the first
    interim eval, below p_threshold 0.1, so each later trial is pruned there. Interim means alone are not read."""
    spec = _three_trial_study(raw, 2, pruner="wilcoxon", p_threshold=0.1, n_startup_steps=2)
    store, calls = Store(spec.output.store_url()), []

    def script(config):
        calls.append(config)
        first = len(calls) == 1
        values = [0.5 + 0.01 * i if first else 0.1 + 0.01 * i for i in range(8)]
        interim = [ev.Metric("eval/rougeL", 2, 0.99), ev.Scores("eval/rougeL", 2, values)]  # a misleading mean
        return [*interim, Finish(SCORES)] if first else [*interim, HANG]

    outcome = run_sweep(spec, store, ScriptedBackend(script, cpus=1), show_progress=False)

    study = _assert_first_completed_and_the_rest_pruned(
        outcome, store, "pruned by the wilcoxon pruner at step 2: eval/rougeL=mean 0.1350 over 8 examples")
    assert sorted(study.trials[0].intermediate_values) == [16 + i for i in range(8)]  # step 2 x 8 examples + i


def test_the_wilcoxon_pruner_needs_the_same_eval_examples_in_every_trial(raw):
    from sweeps.spec import SpecError

    raw["search"] = {"type": "optuna", "space": {"dataset.eval_examples": {"choices": [2, 4]}},
                     "optuna": {"pruner": "wilcoxon", "p_threshold": 1.5}}
    raw["training"].update(max_steps=4, eval_interval_steps=2)
    with pytest.raises(SpecError) as error:
        parse_spec(raw)
    found = {p.path: p.render() for p in error.value.problems}
    assert "the Wilcoxon pruner pairs per-example scores, so every trial must score the same eval examples; " \
           "given ['dataset.eval_examples']" in found["search.optuna.pruner"]
    assert "search.optuna.p_threshold" in found  # a p-value is below 1


def test_a_live_driver_resumes_a_stopped_trial_when_asked(raw):
    """`sweep resume` while the driver lives: the stopped trial goes back to pending and runs again."""
    raw["search"]["grid"] = {"prompt": ["v1", "v2"]}
    raw["search"]["baselines"] = False
    spec = parse_spec(raw)
    store, runs = Store(spec.output.store_url()), []

    class Steer(Recorder):  # another terminal: stop v1, then resume it; stop v2 once v1 has completed
        def on_transition(self, change):
            super().on_transition(change)
            name = change.trial.name
            if (name, change.new) == ("v1", S.RUNNING) and len(self.path("v1")) == 2:
                store.control.request_stop("tiny", "v1")
            elif (name, change.new) == ("v1", S.INTERRUPTED):
                store.control.request_resume("tiny", "v1")
            elif (name, change.new) == ("v1", S.COMPLETED):
                store.control.request_stop("tiny", "v2")

    def script(config):
        runs.append(config.prompt)
        return [Finish(SCORES)] if runs.count("v1") == 2 and config.prompt == "v1" else [HANG]

    seen = Steer()
    outcome = run_sweep(spec, store, ScriptedBackend(script, cpus=2), show_progress=False, sinks=[seen])

    assert seen.path("v1") == ["submitted", "running", "interrupted", "pending", "submitted", "running", "completed"]
    assert outcome.completed == ["v1"] and outcome.interrupted == ["v2"] and runs.count("v1") == 2
    [v1] = [t for t in store.summary("tiny").trials if t.name == "v1"]
    assert (v1.status, v1.attempts) == ("completed", 2)


class EventRecorder(Recorder):
    """A tracker that wants curves too: one more sink, given to `run_sweep`, with no edit of the driver."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, ev.Event]] = []
        self.flushes = 0
        self.closed = False

    def on_event(self, trial: Trial, event: ev.Event) -> None:
        self.events.append((trial.name, event))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


def test_a_sink_gets_every_event_and_every_state_change_through_one_interface(raw):
    """Ray Tune's callback model: the store, TensorBoard, the study, the progress line and any added tracker
    subscribe to the same calls, so an added sink sees exactly the points the store keeps, in order."""
    raw["search"]["baselines"] = False
    spec = parse_spec(raw)
    store, tracker = Store(spec.output.store_url()), EventRecorder()

    def script(cfg):
        return [ev.Environment({"device": "cpu"}), *(ev.Metric("train/loss", s, 1.0 / s) for s in (1, 2, 3)),
                ev.Metric("eval/rougeL", 3, 0.2), Finish(SCORES)]

    outcome = run_sweep(spec, store, ScriptedBackend(script), show_progress=False, sinks=[tracker])
    assert sorted(outcome.completed) == ["v1", "v2"] and tracker.closed and tracker.flushes >= 1
    for trial in store.summary("tiny").trials:
        mine = [(e.name, e.step, e.value) for name, e in tracker.events if name == trial.name
                and isinstance(e, ev.Metric)]
        kept = [point for point in store.curves(trial.id) if not point[0].startswith("final/")]  # the finals: result
        assert mine == kept and len(mine) == 4
        kinds = [type(e).__name__ for name, e in tracker.events if name == trial.name]
        assert kinds[:3] == ["Started", "Attempt", "Environment"]
        assert trial.environment["device"] == "cpu"  # the store got the same Environment event
        assert tracker.path(trial.name) == ["submitted", "running", "completed"]
