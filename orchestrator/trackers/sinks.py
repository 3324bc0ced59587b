"""The subscribers of everything a trial emits (orchestrator.driver.lifecycle.Sink): its state changes and its events.

One small object per destination: the store, the study, TensorBoard, the progress line
(orchestrator.trackers.progress.Progress), MLflow (orchestrator.trackers.mlflow_view.MlflowView) and the sweep's outcome
(orchestrator.driver.sweep.SweepOutcome). The driver only dispatches: a new tracker is one more class here, never an
edit of the driver.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from orchestrator.driver.lifecycle import Change, Trial
from orchestrator.search.strategies import Search
from results.states import TrialState
from results.trial_records import TrialRecords
from results.tensorboard import TensorBoardWriter
from trainer import events as ev



def curve_point(event: ev.Event) -> bool:
    """A finite metric point: a non-finite one is a diverged trial's reason, never a point of its curve."""
    return isinstance(event, ev.Metric) and math.isfinite(event.value)


class StoreSink:
    """The results store: each stored state with what it keeps (worker, result, reason, retried config), and the
    events it records: curve points (written per batch of events), the environment, where an attempt resumed."""

    def __init__(self, records: TrialRecords):
        self.records = records
        self._points: dict[int, list[tuple[str, int, float]]] = {}

    def on_transition(self, change: Change) -> None:
        trial, new = change.trial, change.new
        if new is TrialState.PENDING:  # a retry: back in the queue with its changed config
            self.records.retry_trial(trial.trial_id, dataclasses.asdict(trial.planned.config), change.reason)
        elif new is TrialState.RUNNING:
            self.records.mark_running(trial.trial_id, change.worker)
        elif new is TrialState.COMPLETED:
            self.flush()  # its last points before its result
            result = change.result
            self.records.complete_trial(trial.trial_id, result, change.runtime_s,
                                      {**result.environment, **trial.where} or None)
        elif new in (TrialState.FAILED, TrialState.PRUNED, TrialState.INTERRUPTED):
            self.records.end_trial(trial.trial_id, new, change.reason, change.runtime_s)
        # SUBMITTED is stored as pending, which the row already is; a REUSED row keeps what it has.

    def on_event(self, trial: Trial, event: ev.Event) -> None:
        match event:
            case ev.Attempt(resume_step=step):  # before any point of this attempt, which reports them all again
                self.flush()
                self.records.resume_from(trial.trial_id, step)
            case ev.Environment(environment=environment):
                self.records.set_environment(trial.trial_id, {**environment, **trial.where})
            case ev.Metric(name=name, step=step, value=value) if curve_point(event):
                self._points.setdefault(trial.trial_id, []).append((name, step, value))

    def flush(self) -> None:
        for trial_id, batch in self._points.items():
            self.records.add_metrics(trial_id, batch)
        self._points.clear()


class StudySink:
    """The search (an Optuna study; a grid ignores it): asked about each interim report, so its pruner can stop a
    trial (through `stop`, the driver's), and told once per trial, when it ends or is reused."""

    def __init__(self, search: Search, stop: Callable[[Trial, TrialState, str], None]):
        self.search, self.stop = search, stop

    def on_transition(self, change: Change) -> None:
        planned = change.trial.planned
        if change.new is TrialState.REUSED:  # the driver that ran it may have died before telling the study
            state, metrics = change.stored
            self.search.tell(planned, state, metrics)
        elif change.new is TrialState.COMPLETED:
            self.search.tell(planned, TrialState.COMPLETED, change.result.metrics)
        elif change.new.final:
            self.search.tell(planned, change.new, {})

    def on_event(self, trial: Trial, event: ev.Event) -> None:
        if not (curve_point(event) or isinstance(event, ev.Scores)):
            return
        if trial.state is not TrialState.RUNNING or trial.planned_end is not None:
            return
        budget = trial.planned.config.training.max_steps  # None for an epoch budget: its trial alone knows it
        if trial.phase is ev.Step.EVALUATE or (budget is not None and event.step >= budget):
            return  # only interim evaluations; the final one is the trial's result
        reason = self.search.prune_reason(trial.planned, event)
        if reason is not None:
            self.stop(trial, TrialState.PRUNED, reason)


class TensorBoardView:
    """TensorBoard, one run per trial: each curve point as the trial reports it, and the HParams record (its swept
    values and final metrics) when it completes."""

    def __init__(self, log_dir: Path):
        self.writer = TensorBoardWriter(log_dir)

    def on_transition(self, change: Change) -> None:
        if change.new is TrialState.COMPLETED:
            planned = change.trial.planned
            self.writer.hparams(planned.name, {"kind": planned.kind, **planned.params}, change.result.metrics)

    def on_event(self, trial: Trial, event: ev.Event) -> None:
        if curve_point(event):
            self.writer.scalar(trial.name, event.name, event.step, event.value)

    def close(self) -> None:
        self.writer.close()
