"""ORM tables of the results store: sweeps, their trials, metric points and per-example predictions."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from results.states import TrialState


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SweepRow(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[dict] = mapped_column(JSON)
    """The validated spec as plain data, so the sweep can be read without its YAML file."""
    run_dir: Mapped[str] = mapped_column(Text)
    notes: Mapped[dict] = mapped_column(JSON, default=dict)
    """How results were computed (e.g. which reference is scored), shown by the leaderboard."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    driver: Mapped[str | None] = mapped_column(String(200))
    """`host:pid` of the orchestrator running this sweep; null when none is."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Last sign of life of `driver` (every few seconds while it runs)."""
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by `sweep stop SWEEP`; the driver stops every trial and exits."""
    trials: Mapped[list[TrialRow]] = relationship(back_populates="sweep", cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "sweep_trials"  # not `trials`: Optuna's tables share this database
    __table_args__ = (UniqueConstraint("sweep_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    """`trial` (fine-tune) or `baseline` (zero-shot)."""
    params: Mapped[dict] = mapped_column(JSON)
    """The swept values of this trial, e.g. {"prompt": "v1", "lora.rank": 8}."""
    config: Mapped[dict] = mapped_column(JSON)
    content_key: Mapped[str] = mapped_column(String(64), index=True)
    """Hash of the resolved config and data: equal keys mean the same computation."""
    status: Mapped[str] = mapped_column(String(20), default=TrialState.PENDING.value)
    """A `results.states.TrialState` value (one of STORED_STATES)."""
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    runtime_s: Mapped[float | None] = mapped_column(Float)
    """Seconds inside the trial function (load to save), without worker start-up."""
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    adapter_dir: Mapped[str | None] = mapped_column(Text)
    scoring: Mapped[dict | None] = mapped_column(JSON)
    """How its metrics were computed (metric version, tokenizer, stemming, references, examples)."""
    environment: Mapped[dict | None] = mapped_column(JSON)
    """Where it ran: device, resolved compute dtype, library versions, peak memory (trainer.hardware)."""
    error: Mapped[str | None] = mapped_column(Text)
    """Last lines of the error (failed), or why it stopped (interrupted, pruned)."""
    worker: Mapped[str | None] = mapped_column(String(200))
    """`host:pid` of the worker process running it, for `sweep status` and for killing it by hand."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Times it was started in this run (2 after an out-of-memory retry)."""
    study_trial: Mapped[int | None] = mapped_column(Integer)
    """Number of the Optuna trial this row records (optuna searches only)."""
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by `sweep stop SWEEP TRIAL`; the driver stops it and marks it interrupted."""
    baseline: Mapped[str | None] = mapped_column(String(200))
    """Name of the zero-shot baseline this fine-tune is compared with (same model, prompt, quantization, ...)."""
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    """Training step of the checkpoint its last attempt continued from; null when it started at step 0."""
    origin: Mapped[str | None] = mapped_column(String(20))
    """How it joined the sweep when not planned by the spec: `clone` or `extend` (null: planned)."""
    parent_id: Mapped[int | None] = mapped_column(Integer)
    """The trial it was cloned or extended from (a row of the same sweep)."""
    forked_at_step: Mapped[int | None] = mapped_column(Integer)
    """The parent's step it starts from (warm start or extension); null for a cold clone. Its curve up to this
    step is the parent's, inherited."""
    resume_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by `sweep resume SWEEP TRIAL`; a live driver runs the stopped trial again from its checkpoint."""
    sweep: Mapped[SweepRow] = relationship(back_populates="trials")
    metrics: Mapped[list[MetricRow]] = relationship(cascade="all, delete-orphan")
    predictions: Mapped[list[PredictionRow]] = relationship(cascade="all, delete-orphan")


class MetricRow(Base):
    __tablename__ = "sweep_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    """`train/loss`, `eval/rougeL`, ... as reported; `final/<metric>` for the result of record."""
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class PredictionRow(Base):
    __tablename__ = "sweep_predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweep_trials.id", ondelete="CASCADE"), index=True)
    example_id: Mapped[str] = mapped_column(String(100))
    prediction: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    """The first reference."""
    references: Mapped[list | None] = mapped_column(JSON)
    """Every reference it was scored against."""
    new_tokens: Mapped[int] = mapped_column(Integer)
    scores: Mapped[dict] = mapped_column(JSON)
