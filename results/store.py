"""The results store: any SQLAlchemy URL (SQLite by default, WAL mode); one session scope owns commit.

Only the sweep driver writes here. Trials report through the orchestrator, so the store works
unchanged when trials run on other machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, delete, event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from results import migrate
from results.busy import LOCK_POLL_S, wait_limit_s, waiting, waits_when_locked
from results.models import MetricRow, PredictionRow, SweepRow, TrialRow, utcnow
from results.states import KEPT_STATES, UNFINISHED_STATES, TrialState
from sweeps.spec import driver_url
from trainer.result import TrialResult

FINAL_PREFIX = "final/"
_PENDING = TrialState.PENDING.value
_ENDED_WITHOUT_RESULT = (TrialState.FAILED, TrialState.PRUNED, TrialState.INTERRUPTED)


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
    def __init__(self, url: str, lock_wait_s: float | None = None):
        """`lock_wait_s`: how long a call waits while another process holds the store locked (default
        $QLORA_SWEEP_STORE_WAIT_S, else 300 s; results.busy)."""
        url = driver_url(url)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.url, self.lock_wait_s = url, lock_wait_s if lock_wait_s is not None else wait_limit_s()
        self.engine = create_engine(url, connect_args=_lock_poll(url, min(LOCK_POLL_S, self.lock_wait_s)))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # A new store is created at the newest revision; an older one upgraded.
        waiting(lambda: migrate.upgrade(self.engine), url, self.lock_wait_s, "opening")
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

    def open_sweep(self, name: str, spec: dict, run_dir: str, notes: dict, driver: str | None = None,
                   replacing: str | None = None) -> int | None:
        """Create or update the sweep and claim it for `driver`, in one transaction: its id, or None (and
        nothing written) when the sweep's driver is no longer `replacing` (None, or a dead one seen a moment
        ago) because another driver claimed it, or created it, in between. `driver` None records the sweep
        without claiming it (imports, tests), and only while no driver holds it."""
        values = dict(spec=spec, run_dir=run_dir, notes=notes, stop_requested=False)
        if driver is not None:
            values.update(driver=driver, heartbeat_at=utcnow())
        try:
            with self.session() as s:
                sweep_id = s.scalar(select(SweepRow.id).where(SweepRow.name == name))
                if sweep_id is None:
                    row = SweepRow(name=name, **values)
                    s.add(row)
                    s.flush()
                    return row.id
                claim = update(SweepRow).where(SweepRow.id == sweep_id, _held_by(replacing)).values(**values)
                if s.execute(claim).rowcount != 1:
                    return None
                s.execute(update(TrialRow).where(TrialRow.sweep_id == sweep_id).values(stop_requested=False))
                return sweep_id
        except IntegrityError:  # another driver created the same sweep at the same instant, and won
            return None

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

    def add_trial(self, sweep_name: str, name: str, params: dict, config: dict, content_key: str, origin: str,
                  parent_id: int, forked_at_step: int | None, baseline: str | None) -> int | None:
        """A fine-tune added to a sweep while it runs (a clone, an extension), pending; None when the name is
        taken (nothing is written then)."""
        with self.session() as s:
            sweep_id = s.scalar(select(SweepRow.id).where(SweepRow.name == sweep_name))
            if s.scalar(select(TrialRow.id).where(TrialRow.sweep_id == sweep_id, TrialRow.name == name)) is not None:
                return None
            row = TrialRow(sweep_id=sweep_id, name=name, kind="trial", params=params, config=config,
                           content_key=content_key, status=_PENDING, origin=origin, parent_id=parent_id,
                           forked_at_step=forked_at_step, baseline=baseline)
            s.add(row)
            s.flush()
            return row.id

    def added_trials(self, sweep_id: int, known: set[int] = frozenset()) -> list[tuple[int, str, dict, dict, str | None]]:
        """(id, name, params, config, baseline) of each trial added while the sweep ran (clones, extensions), but
        the `known` ids (those a live driver has already)."""
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.origin.is_not(None),
                                                    TrialRow.id.not_in(known)).order_by(TrialRow.id))
            return [(r.id, r.name, dict(r.params), dict(r.config), r.baseline) for r in rows]

    def request_resume(self, sweep_name: str, trial_name: str) -> bool:
        """Ask the sweep's live driver to run a stopped trial again; False if there is no such trial."""
        with self.session() as s:
            found = s.execute(update(TrialRow).where(
                TrialRow.sweep_id == select(SweepRow.id).where(SweepRow.name == sweep_name).scalar_subquery(),
                TrialRow.name == trial_name).values(resume_requested=True, stop_requested=False))
            return found.rowcount > 0

    def take_resume_requests(self, sweep_id: int) -> set[int]:
        """Ids of the trials `sweep resume` asked for since the last call (the requests are cleared)."""
        with self.session() as s:
            ids = set(s.scalars(select(TrialRow.id).where(TrialRow.sweep_id == sweep_id, TrialRow.resume_requested)))
            if ids:
                s.execute(update(TrialRow).where(TrialRow.id.in_(ids)).values(resume_requested=False))
            return ids

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
            raise ValueError(f"a trial ends without a result as one of {', '.join(s.value for s in _ENDED_WITHOUT_RESULT)}"
                             f"; given {state!r}")
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.status, row.finished_at, row.runtime_s, row.error = state.value, utcnow(), runtime_s, reason

    def heartbeat(self, sweep_id: int) -> None:
        with self.session() as s:
            s.execute(update(SweepRow).where(SweepRow.id == sweep_id).values(heartbeat_at=utcnow()))

    def release_sweep(self, sweep_id: int, driver: str) -> None:
        """Give the sweep up, if `driver` still holds it."""
        with self.session() as s:
            s.execute(update(SweepRow).where(SweepRow.id == sweep_id, SweepRow.driver == driver)
                      .values(driver=None, stop_requested=False))

    def request_stop(self, sweep_name: str, trial_name: str | None = None) -> bool:
        """Ask the sweep's driver to stop the sweep or one trial; False if there is no such trial."""
        with self.session() as s:
            sweep = s.scalar(select(SweepRow).where(SweepRow.name == sweep_name))
            if trial_name is None:
                sweep.stop_requested = True
                return True
            found = s.execute(update(TrialRow).where(TrialRow.sweep_id == sweep.id, TrialRow.name == trial_name)
                              .values(stop_requested=True))
            return found.rowcount > 0

    def stop_requests(self, sweep_id: int) -> tuple[bool, set[int]]:
        """(whole sweep asked to stop, ids of the trials asked to stop)."""
        with self.session() as s:
            whole = bool(s.scalar(select(SweepRow.stop_requested).where(SweepRow.id == sweep_id)))
            ids = set(s.scalars(select(TrialRow.id).where(TrialRow.sweep_id == sweep_id, TrialRow.stop_requested)))
            return whole, ids

    def interrupt_unfinished(self, sweep_name: str, reason: str, gone_driver: str | None) -> list[str] | None:
        """Mark the pending and running trials of a sweep whose driver `gone_driver` is gone as interrupted,
        and clear it; None (nothing changed) when another driver has claimed the sweep since it was read."""
        with self.session() as s:
            release = update(SweepRow).where(SweepRow.name == sweep_name, _held_by(gone_driver)).values(driver=None)
            if s.execute(release).rowcount != 1:
                return None
            rows = s.scalars(select(TrialRow).join(SweepRow).where(
                SweepRow.name == sweep_name, TrialRow.status.in_(UNFINISHED_STATES))).all()
            for row in rows:
                row.status, row.finished_at, row.error = TrialState.INTERRUPTED.value, utcnow(), reason
            return [r.name for r in rows]

    def trial_result(self, trial_id: int) -> tuple[str, dict[str, float]]:
        """(status, final metrics) of one trial."""
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            return row.status, _finals(row)

    def driver_of(self, sweep_name: str) -> tuple[str | None, datetime | None] | None:
        """(driver, last heartbeat) of a sweep, None when there is no such sweep; reads nothing else."""
        with self.session() as s:
            found = s.execute(select(SweepRow.driver, SweepRow.heartbeat_at).where(SweepRow.name == sweep_name)).first()
            return None if found is None else (found.driver, _aware(found.heartbeat_at))

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
                                dict(sweep.spec or {}), sweep.driver, _aware(sweep.heartbeat_at), sweep.run_dir)

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


def _clear_results(s: Session, trial_id: int) -> None:
    s.execute(delete(MetricRow).where(MetricRow.trial_id == trial_id))
    s.execute(delete(PredictionRow).where(PredictionRow.trial_id == trial_id))


def _prediction(trial_id: int, p: dict) -> PredictionRow:
    references = p.get("references") or [p["reference"]]
    scores = {k: v for k, v in p.items() if k not in ("example_id", "prediction", "reference", "references",
                                                      "new_tokens")}
    return PredictionRow(trial_id=trial_id, example_id=p["example_id"], prediction=p["prediction"],
                         reference=references[0], references=references, new_tokens=p["new_tokens"], scores=scores)


def _trial_summary(t: TrialRow, last_step: int | None) -> TrialSummary:
    return TrialSummary(
        name=t.name, kind=t.kind, params=dict(t.params), status=t.status, runtime_s=t.runtime_s, metrics=_finals(t),
        error=t.error, started_at=_aware(t.started_at), worker=t.worker, attempts=t.attempts or 0,
        study_trial=t.study_trial, last_step=last_step, finished_at=_aware(t.finished_at), scoring=t.scoring,
        adapter_dir=t.adapter_dir, id=t.id, environment=t.environment, baseline=t.baseline,
        resumed_from_step=t.resumed_from_step, timings_s=dict(t.timings or {}), origin=t.origin,
        parent_id=t.parent_id, forked_at_step=t.forked_at_step, content_key=t.content_key)


def _finals(t: TrialRow) -> dict[str, float]:
    """The trial's metrics of record, without the `final/` prefix."""
    return {m.name.removeprefix(FINAL_PREFIX): m.value for m in t.metrics if m.name.startswith(FINAL_PREFIX)}


def _last_train_steps(s: Session, *where) -> dict[int, int]:
    """Trial id -> highest training step reported, for the trials matching `where`."""
    return dict(s.execute(select(MetricRow.trial_id, func.max(MetricRow.step)).join(TrialRow)
                          .where(MetricRow.name.like("train/%"), *where).group_by(MetricRow.trial_id)).all())


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; every time stored here is UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


def _lock_poll(url: str, poll_s: float) -> dict:
    """One attempt's wait on another process's lock, after which results.busy retries (and says so)."""
    if url.startswith("sqlite"):
        return {"timeout": poll_s}
    if url.startswith("postgresql"):
        return {"options": f"-c lock_timeout={max(int(poll_s * 1000), 1)}"}
    return {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (leaderboard) never block the writing driver
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _held_by(driver: str | None):
    """SQL condition: the sweep is held by `driver` (None: by no driver)."""
    return SweepRow.driver.is_(None) if driver is None else SweepRow.driver == driver
