"""A trial's rows as the driver writes them: registered, started, retried, its curve points, where it ran,
its result of record or why it ended without one. Only the driver's store sink (orchestrator.trackers.sinks)
and its registration write here.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from results.busy import waits_when_locked
from results.database import StorePart
from results.states import KEPT_STATES, TrialState
from results.tables import MetricRow, PredictionRow, TrialRow, utcnow
from trainer.result import TrialResult

FINAL_PREFIX = "final/"
"""A metric point named `final/<metric>` is the trial's result of record, at its last step."""
_PENDING = TrialState.PENDING.value
_ENDED_WITHOUT_RESULT = (TrialState.FAILED, TrialState.PRUNED, TrialState.INTERRUPTED)


@waits_when_locked
class TrialRecords(StorePart):
    def register_trial(self, sweep_id: int, name: str, kind: str, params: dict, config: dict,
                       content_key: str, study_trial: int | None = None, baseline: str | None = None
                       ) -> tuple[int, bool]:
        """(trial id, already done). A completed (or pruned) trial with the same content key is kept,
        not re-run; anything else under that name runs again, so re-running adds no duplicate rows. An
        unfinished one with the same content key keeps its curves until its next attempt starts
        (`resume_from`); a changed one starts over at once."""
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.name == name))
            if row is not None and row.status in KEPT_STATES and row.content_key == content_key:
                return row.id, True
            if row is None:
                row = TrialRow(sweep_id=sweep_id, name=name)
                s.add(row)
            elif row.content_key != content_key or row.status in KEPT_STATES:
                _clear_results(s, row.id)
            row.kind, row.params, row.config, row.content_key = kind, params, config, content_key
            row.status, row.error, row.runtime_s, row.started_at, row.finished_at = _PENDING, None, None, None, None
            row.worker, row.attempts, row.study_trial, row.stop_requested = None, 0, study_trial, False
            row.environment, row.baseline, row.resumed_from_step = None, baseline, None
            s.flush()
            return row.id, False

    def resume_from(self, trial_id: int, step: int) -> None:
        """A new attempt starts, from checkpoint `step` (0: from scratch). Its points are dropped: the attempt
        reports the checkpoint's own points again (those reported while no driver listened included), then
        its new ones, so its curve has every step once."""
        with self.session() as s:
            _clear_results(s, trial_id)
            s.get(TrialRow, trial_id).resumed_from_step = step or None

    def mark_running(self, trial_id: int, worker: str | None = None) -> None:
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.started_at, row.worker = TrialState.RUNNING.value, utcnow(), worker
            row.attempts = (row.attempts or 0) + 1

    def retry_trial(self, trial_id: int, config: dict, reason: str) -> None:
        """Back to pending with a changed config (e.g. half the micro batch after an out-of-memory error)."""
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.config, row.error, row.worker = _PENDING, config, reason, None

    def add_metrics(self, trial_id: int, points: list[tuple[str, int, float]]) -> None:
        with self.session() as s:
            s.add_all(MetricRow(trial_id=trial_id, name=n, step=step, value=v) for n, step, v in points)

    def complete_trial(self, trial_id: int, result: TrialResult, runtime_s: float,
                       environment: dict | None = None) -> None:
        """Its result of record: final metrics (at its last step), predictions, timings, adapter and scoring.
        `environment` (where it ran) replaces the one it reported at start when given."""
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.finished_at, row.runtime_s = TrialState.COMPLETED.value, utcnow(), runtime_s
            row.timings, row.adapter_dir, row.scoring = result.timings_s, result.adapter_dir, result.scoring
            row.environment = environment or result.environment or row.environment
            step = max((m.step for m in row.metrics), default=0)
            s.add_all(MetricRow(trial_id=trial_id, name=FINAL_PREFIX + k, step=step, value=v)
                      for k, v in result.metrics.items())
            s.add_all(_prediction(trial_id, p) for p in result.predictions)

    def set_environment(self, trial_id: int, environment: dict) -> None:
        """What the trial reported of its device when it started (before any result)."""
        with self.session() as s:
            s.get(TrialRow, trial_id).environment = environment

    def end_trial(self, trial_id: int, state: TrialState, reason: str, runtime_s: float | None = None) -> None:
        """Ended without a result (failed, pruned, interrupted): the reason is kept, and so are its curves."""
        state = TrialState(state)
        if state not in _ENDED_WITHOUT_RESULT:
            allowed = ", ".join(s.value for s in _ENDED_WITHOUT_RESULT)
            raise ValueError(f"a trial ends without a result as one of {allowed}; given {state!r}")
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.finished_at, row.runtime_s, row.error = state.value, utcnow(), runtime_s, reason

    def trial_result(self, trial_id: int) -> tuple[str, dict[str, float]]:
        """(status, final metrics) of one trial."""
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            return row.status, finals(row)


def finals(t: TrialRow) -> dict[str, float]:
    """The trial's metrics of record, without the `final/` prefix."""
    return {m.name.removeprefix(FINAL_PREFIX): m.value for m in t.metrics if m.name.startswith(FINAL_PREFIX)}


def _clear_results(s: Session, trial_id: int) -> None:
    s.execute(delete(MetricRow).where(MetricRow.trial_id == trial_id))
    s.execute(delete(PredictionRow).where(PredictionRow.trial_id == trial_id))


def _prediction(trial_id: int, p: dict) -> PredictionRow:
    references = p.get("references") or [p["reference"]]
    scores = {k: v for k, v in p.items() if k not in ("example_id", "prediction", "reference", "references",
                                                      "new_tokens")}
    return PredictionRow(trial_id=trial_id, example_id=p["example_id"], prediction=p["prediction"],
                         reference=references[0], references=references, new_tokens=p["new_tokens"], scores=scores)
