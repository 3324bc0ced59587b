"""What the driver needs from whatever runs its trials: the `Backend` protocol, and what a finished trial returns.

`orchestrator.backends.ray_backend.RayBackend` implements it on a Ray cluster (or a local Ray); the lifecycle tests
implement it with a scripted backend in-process. The driver depends on this protocol alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainer import events as ev
from trainer.config import TrialConfig


@dataclass(frozen=True)
class Outcome:
    """A trial's end, as its backend saw it: a result, or an error with its kind."""

    key: Any
    result: Any = None
    """The trial's TrialResult when it succeeded."""
    runtime_s: float | None = None
    """Seconds inside the trial function, measured in the worker."""
    error: str | None = None
    """Last lines of the error when it raised or its worker died."""
    failure: ev.FailureKind | None = None
    """Why, by the error's type, when there is an error."""


class Backend(Protocol):
    def total(self, resource: str) -> float:
        """How much of `resource` (`CPU`, `GPU`) the whole cluster has."""

    def largest_node(self, resource: str) -> float:
        """The most of `resource` one live node has: a trial needing more is never placed."""

    def share(self, value: Any) -> Any:
        """A handle to a large read-only value (a dataset) that every trial receives."""

    def submit(self, key: Any, config: TrialConfig, data_ref: Any, out_dir: Path, cpus: int, gpus: float) -> None:
        """Start trial `key` on a worker when one is free."""

    def submit_pack(self, keys: list, configs: list[TrialConfig], data_refs: list, out_dirs: list[Path], cpus: int,
                    gpus: float) -> None:
        """Start trials `keys` together in one worker on one base (trainer.lockstep); each ends with its own outcome."""

    def cancel(self, key: Any) -> None:
        """End trial `key`: kill its worker, or take it out of its pack; its outcome then arrives as an error."""

    def is_pending(self, key: Any) -> bool:
        """Submitted and not yet finished."""

    @property
    def running(self) -> int:
        """Workers busy: each runs one trial or one pack."""

    def finished(self, timeout_s: float) -> list[Outcome]:
        """Trials that ended within `timeout_s`, successfully or not."""

    def free_gpu_bytes(self, gpus: float) -> int:
        """Free memory of the GPU a worker with `gpus` GPUs would train on, as that worker measures it (bytes)."""

    def drain_events(self) -> list[tuple[Any, ev.Event]]:
        """Every event reported since the last call, in order, with its trial's key."""
