"""What follows each change of a trial's state: one small object per destination, registered on the Lifecycle.

The progress line (orchestrator.progress.Progress) and the sweep's outcome (orchestrator.sweep.SweepOutcome)
are sinks too. A new destination (MLflow, a dashboard) is one more class with `on_transition`.
"""

from __future__ import annotations

import dataclasses

from orchestrator.lifecycle import Change
from orchestrator.search import Search
from results.states import TrialState
from results.store import Store
from results.tensorboard import TensorBoardSink

S = TrialState


class StoreSink:
    """The results store: each stored state, with what it keeps (worker, result, reason, retried config)."""

    def __init__(self, store: Store):
        self.store = store

    def on_transition(self, change: Change) -> None:
        trial, new = change.trial, change.new
        if new is S.PENDING:  # a retry: back in the queue with its changed config
            self.store.retry_trial(trial.trial_id, dataclasses.asdict(trial.planned.config), change.reason)
        elif new is S.RUNNING:
            self.store.mark_running(trial.trial_id, change.worker)
        elif new is S.COMPLETED:
            result = change.result
            self.store.complete_trial(trial.trial_id, result, change.runtime_s,
                                      {**result.environment, **trial.where} or None)
        elif new in (S.FAILED, S.PRUNED, S.INTERRUPTED):
            self.store.end_trial(trial.trial_id, new, change.reason, change.runtime_s)
        # SUBMITTED is stored as pending, which the row already is; a REUSED row keeps what it has.


class StudySink:
    """The search (an Optuna study; a grid ignores it): told once per trial, when it ends or is reused."""

    def __init__(self, search: Search):
        self.search = search

    def on_transition(self, change: Change) -> None:
        planned = change.trial.planned
        if change.new is S.REUSED:  # the driver that ran it may have died before telling the study
            state, metrics = change.stored
            self.search.tell(planned, state, metrics)
        elif change.new is S.COMPLETED:
            self.search.tell(planned, S.COMPLETED, change.result.metrics)
        elif change.new.final:
            self.search.tell(planned, change.new, {})


class HParamsSink:
    """TensorBoard's HParams view: a completed trial's swept values and final metrics. (Its curves are
    written as the trial reports them, by the driver.)"""

    def __init__(self, tensorboard: TensorBoardSink):
        self.tensorboard = tensorboard

    def on_transition(self, change: Change) -> None:
        if change.new is S.COMPLETED:
            planned = change.trial.planned
            self.tensorboard.hparams(planned.name, {"kind": planned.kind, **planned.params}, change.result.metrics)
