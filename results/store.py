"""The results store: any SQLAlchemy URL (SQLite by default, WAL mode); one session scope owns commit.

Only the sweep driver writes here. Trials report through the orchestrator, so the store works
unchanged when trials run on other machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.orm import Session, sessionmaker

from results.models import Base, MetricRow, PredictionRow, SweepRow, TrialRow, utcnow

FINAL_PREFIX = "final/"


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


@dataclass(frozen=True)
class SweepSummary:
    name: str
    notes: dict
    trials: list[TrialSummary] = field(default_factory=list)


class Store:
    def __init__(self, url: str):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The one place that commits: everything inside lands together or not at all."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def open_sweep(self, name: str, spec: dict, run_dir: str, notes: dict) -> int:
        with self.session() as s:
            row = s.scalar(select(SweepRow).where(SweepRow.name == name))
            if row is None:
                row = SweepRow(name=name, spec=spec, run_dir=run_dir, notes=notes)
                s.add(row)
            else:
                row.spec, row.run_dir, row.notes = spec, run_dir, notes
            s.flush()
            return row.id

    def register_trial(self, sweep_id: int, name: str, kind: str, params: dict, config: dict,
                       content_key: str) -> tuple[int, bool]:
        """(trial id, already done). A finished trial with the same content key is kept, not re-run;
        anything else under that name starts over, so re-running adds no duplicate rows."""
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.name == name))
            if row is not None and row.status == "completed" and row.content_key == content_key:
                return row.id, True
            if row is None:
                row = TrialRow(sweep_id=sweep_id, name=name)
                s.add(row)
            else:
                _clear_results(s, row.id)
            row.kind, row.params, row.config, row.content_key = kind, params, config, content_key
            row.status, row.error, row.runtime_s, row.started_at, row.finished_at = "pending", None, None, None, None
            s.flush()
            return row.id, False

    def mark_running(self, trial_id: int) -> None:
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.started_at = "running", utcnow()

    def add_metrics(self, trial_id: int, points: list[tuple[str, int, float]]) -> None:
        with self.session() as s:
            s.add_all(MetricRow(trial_id=trial_id, name=n, step=step, value=v) for n, step, v in points)

    def complete_trial(self, trial_id: int, metrics: dict[str, float], predictions: list[dict],
                       runtime_s: float, timings: dict, adapter_dir: str | None) -> None:
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.finished_at, row.runtime_s = "completed", utcnow(), runtime_s
            row.timings, row.adapter_dir = timings, adapter_dir
            step = max((m.step for m in row.metrics), default=0)
            s.add_all(MetricRow(trial_id=trial_id, name=FINAL_PREFIX + k, step=step, value=v)
                      for k, v in metrics.items())
            s.add_all(_prediction(trial_id, p) for p in predictions)

    def fail_trial(self, trial_id: int, error: str, runtime_s: float | None) -> None:
        """Failed, with the error's text; metrics reported so far stay."""
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.finished_at, row.runtime_s, row.error = "failed", utcnow(), runtime_s, error

    def sweep_names(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(SweepRow.name).order_by(SweepRow.created_at, SweepRow.id)))

    def summary(self, sweep_name: str) -> SweepSummary | None:
        with self.session() as s:
            sweep = s.scalar(select(SweepRow).where(SweepRow.name == sweep_name))
            if sweep is None:
                return None
            return SweepSummary(sweep.name, dict(sweep.notes or {}),
                                [_trial_summary(t) for t in sorted(sweep.trials, key=lambda t: t.id)])

    def curves(self, trial_id: int) -> list[tuple[str, int, float]]:
        with self.session() as s:
            rows = s.scalars(select(MetricRow).where(MetricRow.trial_id == trial_id).order_by(MetricRow.id))
            return [(r.name, r.step, r.value) for r in rows]

    def predictions(self, sweep_name: str, trial_name: str) -> list[dict]:
        with self.session() as s:
            rows = s.scalars(select(PredictionRow).join(TrialRow).join(SweepRow).where(
                SweepRow.name == sweep_name, TrialRow.name == trial_name).order_by(PredictionRow.id))
            return [{"example_id": r.example_id, "prediction": r.prediction, "reference": r.reference,
                     "new_tokens": r.new_tokens, **r.scores} for r in rows]


def _clear_results(s: Session, trial_id: int) -> None:
    s.execute(delete(MetricRow).where(MetricRow.trial_id == trial_id))
    s.execute(delete(PredictionRow).where(PredictionRow.trial_id == trial_id))


def _prediction(trial_id: int, p: dict) -> PredictionRow:
    scores = {k: v for k, v in p.items() if k not in ("example_id", "prediction", "reference", "new_tokens")}
    return PredictionRow(trial_id=trial_id, example_id=p["example_id"], prediction=p["prediction"],
                         reference=p["reference"], new_tokens=p["new_tokens"], scores=scores)


def _trial_summary(t: TrialRow) -> TrialSummary:
    finals = {m.name.removeprefix(FINAL_PREFIX): m.value for m in t.metrics if m.name.startswith(FINAL_PREFIX)}
    return TrialSummary(t.name, t.kind, dict(t.params), t.status, t.runtime_s, finals, t.error, t.started_at)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (leaderboard) never block the writing driver
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
