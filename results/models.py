"""ORM tables of the results store: sweeps, their trials, metric points and per-example predictions."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

TRIAL_STATES = ("pending", "running", "completed", "failed")


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
    trials: Mapped[list[TrialRow]] = relationship(back_populates="sweep", cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "trials"
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
    status: Mapped[str] = mapped_column(String(20), default="pending")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    runtime_s: Mapped[float | None] = mapped_column(Float)
    """Seconds inside the trial function (load to save), without worker start-up."""
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    adapter_dir: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    sweep: Mapped[SweepRow] = relationship(back_populates="trials")
    metrics: Mapped[list[MetricRow]] = relationship(cascade="all, delete-orphan")
    predictions: Mapped[list[PredictionRow]] = relationship(cascade="all, delete-orphan")


class MetricRow(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    """`train/loss`, `eval/rougeL`, ... as reported; `final/<metric>` for the result of record."""
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class PredictionRow(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    example_id: Mapped[str] = mapped_column(String(100))
    prediction: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    new_tokens: Mapped[int] = mapped_column(Integer)
    scores: Mapped[dict] = mapped_column(JSON)
