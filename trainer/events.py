"""What a trial reports while it runs, as typed events, and the one encoding they cross processes in.

The trial (trainer.trial), its worker (orchestrator.backends.ray_backend) and the driver
(orchestrator.driver.sweep) share these classes; only `encode`/`decode` know the wire form (a plain dict with an
`event` tag), which is also how a checkpoint keeps the points reported before it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Started:
    """The worker took the trial."""

    worker: str
    """`host:pid` of the worker process."""
    node: str | None = None
    """The cluster node it runs on."""


@dataclass(frozen=True)
class Attempt:
    """A new attempt begins; it reports again every point up to `resume_step` (its checkpoint's)."""

    resume_step: int = 0


@dataclass(frozen=True)
class Environment:
    """Where the trial runs: trainer.hardware.environment_record."""

    environment: dict


class Step(str, Enum):
    """A trial's named steps, in order."""

    LOAD = "load"
    ADAPT = "adapt"
    TRAIN = "train"
    EVALUATE = "evaluate"
    """The final evaluation: the metrics it reports are the trial's result, not interim ones."""
    SAVE = "save"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Phase:
    """The trial entered one of its named steps."""

    name: Step
    """load, adapt, train, evaluate or save (a plain string is read as its Step)."""

    def __post_init__(self):
        object.__setattr__(self, "name", Step(self.name))


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint was saved at optimizer step `step`: a new attempt would resume there."""

    step: int


@dataclass(frozen=True)
class Metric:
    """One curve point: `train/loss`, `eval/rougeL`, ... at an optimizer step."""

    name: str
    step: int
    value: float


@dataclass(frozen=True)
class Scores:
    """Per-example scores of an interim evaluation, in eval-example order (the same examples for every trial)."""

    name: str
    """`eval/rougeL`, ..."""
    step: int
    values: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class Budget:
    """Training begins: `total_steps` optimizer steps (an epoch budget's count is known only now)."""

    total_steps: int


@dataclass(frozen=True)
class Left:
    """The trial left its pack before the pack ended (stopped, pruned or diverged): its outcome, an error. The
    backend turns it into that outcome; the driver never sees it as an event."""

    error: str
    failure: str
    """A FailureKind value."""


Event = Started | Attempt | Environment | Phase | Metric | Scores | Checkpoint | Budget | Left
_KINDS: dict[str, type] = {"started": Started, "attempt": Attempt, "environment": Environment, "step": Phase,
                           "metric": Metric, "scores": Scores, "checkpoint": Checkpoint, "budget": Budget,
                           "left": Left}
_TAGS = {kind: tag for tag, kind in _KINDS.items()}


class FailureKind(str, Enum):
    """Why a trial failed, as a typed field (never read off an error message by the driver)."""

    OUT_OF_MEMORY = "out of memory"
    DIVERGED = "diverged"
    TIMED_OUT = "timed out"
    STALLED = "stalled"
    WORKER_DIED = "worker died"
    DISK_FULL = "disk full"
    RAISED = "raised"


class TrialDiverged(RuntimeError):
    """A non-finite training loss, gradient norm or evaluation metric: the trial cannot recover."""


def failure_kind(error: BaseException) -> FailureKind:
    """What an exception a trial raised (or its worker's death) says about why it failed; by type, not text.
    torch's OutOfMemoryError is recognised by its class name, so that the driver need not import torch."""
    causes = [error, getattr(error, "cause", None), error.__cause__]
    names = {k.__name__ for e in causes if e is not None for k in type(e).__mro__}
    if any(isinstance(e, TrialDiverged) for e in causes):
        return FailureKind.DIVERGED
    if "DiskFull" in names:  # trainer.checkpoints.DiskFull (by name: no import of the trainer's checkpoints here)
        return FailureKind.DISK_FULL
    if "OutOfMemoryError" in names:  # torch.OutOfMemoryError, or Ray's memory monitor (ray.exceptions)
        return FailureKind.OUT_OF_MEMORY
    if names & {"WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError"}:
        return FailureKind.WORKER_DIED
    return FailureKind.RAISED


def encode(event: Event) -> dict:
    """The wire form: `{"event": tag, **fields}`."""
    fields = {k: v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v
              for k, v in dataclasses.asdict(event).items()}
    return {"event": _TAGS[type(event)], **fields}


def decode(raw: dict) -> Event:
    fields = dict(raw)
    tag = fields.pop("event")
    if tag not in _KINDS:
        raise ValueError(f"an event's tag must be one of {', '.join(_KINDS)}; given {tag!r}")
    return _KINDS[tag](**fields)
