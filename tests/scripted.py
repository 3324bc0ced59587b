"""A scripted Backend: no Ray, no model. Each submitted trial plays a script, one item per poll of the driver,
so the driver's lifecycle is tested in-process in seconds (the Ray tests keep testing the real backend)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.backends.backend import Outcome
from trainer import events as ev
from trainer.config import TrialConfig
from trainer.result import TrialResult

HANG = "hang"
"""A script item: the trial reports nothing more and never ends, until it is cancelled."""


@dataclass(frozen=True)
class Finish:
    metrics: dict[str, float]
    runtime_s: float = 1.0
    predictions: tuple[dict, ...] = ()
    environment: dict | None = None
    adapter: bool = False
    """Write a (stand-in) adapter folder into the trial's folder, as a real trial saves one."""


@dataclass(frozen=True)
class Fail:
    error: str
    failure: ev.FailureKind = ev.FailureKind.RAISED


@dataclass(frozen=True)
class Call:
    """A script item that reports nothing: `action()` runs when the trial reaches it (another process locking
    the store mid-trial, say)."""

    action: Callable[[], Any]


Script = list  # of ev.Event, Finish, Fail, Call or HANG


class ScriptedBackend:
    """Implements orchestrator.backends.backend.Backend. `script(config)` gives a trial's items; a submitted trial
    reports Started and Attempt(0) first, as RayBackend's workers do."""

    def __init__(self, script: Callable[[TrialConfig], Script], cpus: int = 2, tick_s: float = 0.005, gpus: int = 0,
                 gpu_free_bytes: int = 80 * 2**30):
        self.script, self.cpus, self.tick_s, self.gpus = script, cpus, tick_s, gpus
        self.gpu_free_bytes = gpu_free_bytes
        self._scripts: dict[Any, list] = {}
        self._cancelled: set[Any] = set()
        self._events: list[tuple[Any, ev.Event]] = []
        self.submitted: list[tuple[Any, TrialConfig]] = []
        self.packs: list[list] = []
        """The keys of each pack submitted, in order."""
        self._out_dirs: dict[Any, Path] = {}

    def total(self, resource: str) -> float:
        return float({"CPU": self.cpus, "GPU": self.gpus}.get(resource, 0))

    largest_node = total

    def free_gpu_bytes(self, gpus: float) -> int:
        return self.gpu_free_bytes

    def share(self, value: Any) -> Any:
        return value

    def submit(self, key: Any, config: TrialConfig, data_ref: Any, out_dir: Path, cpus: int, gpus: float) -> None:
        self.submitted.append((key, config))
        out_dir.mkdir(parents=True, exist_ok=True)  # as RayBackend's worker does, with the trial's own log
        (out_dir / "trial.log").write_text(f"scripted trial {config.prompt} r{config.lora.rank}\n", encoding="utf-8")
        self._out_dirs[key] = out_dir
        self._scripts[key] = [ev.Started(f"scripted:{len(self.submitted)}"), ev.Attempt(0), *self.script(config)]

    def submit_pack(self, keys: list, configs: list, data_refs: list, out_dirs: list[Path], cpus: int,
                    gpus: float) -> None:
        """Each trial of the pack plays its own script; the pack holds one worker until its last trial ends."""
        self.packs.append(list(keys))
        for key, config, data_ref, out_dir in zip(keys, configs, data_refs, out_dirs):
            self.submit(key, config, data_ref, out_dir, cpus, gpus)
            self._scripts[key][0] = ev.Started(f"scripted pack {self.packs[-1]}")

    def cancel(self, key: Any) -> None:
        if key in self._scripts:
            self._cancelled.add(key)

    def is_pending(self, key: Any) -> bool:
        return key in self._scripts

    @property
    def running(self) -> int:
        alone = [k for k in self._scripts if not any(k in pack for pack in self.packs)]
        return len(alone) + sum(any(k in self._scripts for k in pack) for pack in self.packs)

    def finished(self, timeout_s: float) -> list[Outcome]:
        """Every pending trial plays its next item; those that reached their end (or were cancelled) are returned."""
        time.sleep(min(timeout_s, self.tick_s))  # a tick of wall time, for the driver's time limits
        done = []
        for key in list(self._scripts):
            if key in self._cancelled:
                done.append(Outcome(key, error="the worker was killed (cancelled by the driver)",
                                    failure=ev.FailureKind.WORKER_DIED))
                continue
            items = self._scripts[key]
            item = items[0] if items[0] == HANG else items.pop(0)
            if isinstance(item, Finish):
                done.append(Outcome(key, result=self._result(key, item), runtime_s=item.runtime_s))
            elif isinstance(item, Fail):
                done.append(Outcome(key, error=item.error, failure=item.failure))
            elif isinstance(item, Call):
                item.action()
            elif item != HANG:
                self._events.append((key, item))
        for outcome in done:
            del self._scripts[outcome.key]
            self._cancelled.discard(outcome.key)
        return done

    def _result(self, key: Any, item: Finish) -> TrialResult:
        adapter = None
        if item.adapter:
            adapter = self._out_dirs[key] / "adapter"
            adapter.mkdir(exist_ok=True)
            (adapter / "adapter_config.json").write_text('{"r": 4}', encoding="utf-8")
        return TrialResult(item.metrics, list(item.predictions), adapter and str(adapter), {"train": item.runtime_s},
                           environment=item.environment or {})

    def drain_events(self) -> list[tuple[Any, ev.Event]]:
        drained, self._events = self._events, []
        return drained
