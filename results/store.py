"""The results store: one database (results.database) and the parts that write it, each with one job, plus the
reads every view shares.

- `store.records` (results.trial_records): a trial's rows as the driver writes them;
- `store.control` (results.control_requests): stop, resume and added trials, from other terminals to the driver;
- `store.lease` (results.driver_lease): which driver holds a sweep, its heartbeat, its release.

Only the sweep driver writes results. Trials report through the orchestrator, so the store works unchanged when
trials run on other machines. Any SQLAlchemy URL works; the same tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from results.busy import waits_when_locked
from results.control_requests import ControlRequests
from results.database import Database, aware
from results.driver_lease import DriverLease
from results.states import TrialState
from results.tables import MetricRow, PredictionRow, SweepRow, TrialRow
from results.trial_records import FINAL_PREFIX, TrialRecords, finals

__all__ = ["FINAL_PREFIX", "Store", "SweepSummary", "TrialSummary"]


@dataclass(frozen=True)
class TrialSummary:
    """A read-only snapshot of one trial for reports."""

    name: str
    kind: str
    params: dict
    status: str
    runtime_s: float | None
    metrics: dict[str, float]
    """Final metrics (name without the `final/` prefix)."""
    error: str | None = None
    started_at: datetime | None = None
    worker: str | None = None
    attempts: int = 0
    study_trial: int | None = None
    last_step: int | None = None
    """Highest training step reported so far (its progress while running)."""
    finished_at: datetime | None = None
    scoring: dict | None = None
    """How its final metrics were computed; None for results stored before this was recorded."""
    adapter_dir: str | None = None
    id: int | None = None
    """Row id, for the per-trial reads (curves)."""
    environment: dict | None = None
    """Device, resolved compute dtype, versions and peak memory; None before the trial reported them."""
    baseline: str | None = None
    """Name of its own zero-shot baseline; None for baselines and results stored before this was recorded."""
    resumed_from_step: int | None = None
    """Checkpoint step its last attempt continued from; None when it started from step 0."""
    origin: str | None = None
    """`clone` or `extend` for a trial added while the sweep ran; None when its spec planned it."""
    parent_id: int | None = None
    """The row it was cloned or extended from."""
    forked_at_step: int | None = None
    """The parent's step it started from: its curve up to here is inherited. None for a cold clone."""
    content_key: str | None = None
    timings_s: dict = field(default_factory=dict)
    """Seconds per trial step (load, adapt, train, evaluate, save) of a completed trial."""


@dataclass(frozen=True)
class SweepSummary:
    name: str
    notes: dict
    trials: list[TrialSummary] = field(default_factory=list)
    spec: dict = field(default_factory=dict)
    driver: str | None = None
    """`host:pid` of the orchestrator that holds the sweep, if any."""
    heartbeat_at: datetime | None = None
    run_dir: str | None = None
    """Absolute folder of its trials, TensorBoard events and reports (relative in stores written before 0.4)."""


@waits_when_locked
class Store:
    """A store opened at `url`: its parts (`records`, `control`, `lease`) and its reads. `lock_wait_s`: how long
    a call waits while another process holds it locked (results.busy)."""

    def __init__(self, url: str, lock_wait_s: float | None = None):
        self.db = Database(url, lock_wait_s)
        self.url, self.lock_wait_s = self.db.url, self.db.lock_wait_s
        self.records, self.control, self.lease = TrialRecords(self.db), ControlRequests(self.db), DriverLease(self.db)

    def session(self):
        """The one session scope (results.database): everything inside lands together or not at all."""
        return self.db.session()

    def sweep_names(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(SweepRow.name).order_by(SweepRow.created_at, SweepRow.id)))

    def summary(self, sweep_name: str) -> SweepSummary | None:
        with self.session() as s:
            sweep = s.scalar(select(SweepRow).where(SweepRow.name == sweep_name))
            if sweep is None:
                return None
            steps = _last_train_steps(s, TrialRow.sweep_id == sweep.id)
            return SweepSummary(sweep.name, dict(sweep.notes or {}),
                                [_trial_summary(t, steps.get(t.id)) for t in sorted(sweep.trials, key=lambda t: t.id)],
                                dict(sweep.spec or {}), sweep.driver, aware(sweep.heartbeat_at), sweep.run_dir)

    def trial(self, sweep_name: str, trial_name: str) -> tuple[TrialSummary, dict] | None:
        """(summary, resolved config) of one trial, or None."""
        with self.session() as s:
            row = s.scalar(select(TrialRow).join(SweepRow).where(SweepRow.name == sweep_name,
                                                                  TrialRow.name == trial_name))
            if row is None:
                return None
            return _trial_summary(row, _last_train_steps(s, TrialRow.id == row.id).get(row.id)), dict(row.config or {})

    def curves(self, trial_id: int) -> list[tuple[str, int, float]]:
        with self.session() as s:
            rows = s.scalars(select(MetricRow).where(MetricRow.trial_id == trial_id).order_by(MetricRow.id))
            return [(r.name, r.step, r.value) for r in rows]

    def example_scores(self, sweep_name: str, metric: str) -> dict[str, dict[str, float]]:
        """{trial name: {example id: score}} of every completed trial, for paired comparisons."""
        with self.session() as s:
            rows = s.execute(select(TrialRow.name, PredictionRow.example_id, PredictionRow.scores)
                             .join(TrialRow, PredictionRow.trial_id == TrialRow.id)
                             .join(SweepRow).where(SweepRow.name == sweep_name, TrialRow.status == TrialState.COMPLETED.value))
            out: dict[str, dict[str, float]] = {}
            for name, example_id, scores in rows:
                if metric in scores:
                    out.setdefault(name, {})[example_id] = scores[metric]
            return out

    def predictions(self, sweep_name: str, trial_name: str) -> list[dict]:
        with self.session() as s:
            rows = s.scalars(select(PredictionRow).join(TrialRow).join(SweepRow).where(
                SweepRow.name == sweep_name, TrialRow.name == trial_name).order_by(PredictionRow.id))
            return [{"example_id": r.example_id, "prediction": r.prediction, "reference": r.reference,
                     "references": r.references or [r.reference], "new_tokens": r.new_tokens, **r.scores}
                    for r in rows]



def _trial_summary(t: TrialRow, last_step: int | None) -> TrialSummary:
    return TrialSummary(
        name=t.name, kind=t.kind, params=dict(t.params), status=t.status, runtime_s=t.runtime_s, metrics=finals(t),
        error=t.error, started_at=aware(t.started_at), worker=t.worker, attempts=t.attempts or 0,
        study_trial=t.study_trial, last_step=last_step, finished_at=aware(t.finished_at), scoring=t.scoring,
        adapter_dir=t.adapter_dir, id=t.id, environment=t.environment, baseline=t.baseline,
        resumed_from_step=t.resumed_from_step, timings_s=dict(t.timings or {}), origin=t.origin,
        parent_id=t.parent_id, forked_at_step=t.forked_at_step, content_key=t.content_key)


def _last_train_steps(s: Session, *where) -> dict[int, int]:
    """Trial id -> highest training step reported, for the trials matching `where`."""
    return dict(s.execute(select(MetricRow.trial_id, func.max(MetricRow.step)).join(TrialRow)
                          .where(MetricRow.name.like("train/%"), *where).group_by(MetricRow.trial_id)).all())
