"""A Backend that runs the real trial function in this process, one trial at a time, on one thread.

For tests whose subject is what trials compute and what the driver makes of it (specs, exports, studies, clones,
retries), not where trials run: a Ray worker imports torch, transformers, PEFT, bitsandbytes and TRL again for each
trial (about 9 CPU-seconds here, more than a tiny trial's own work), this process has them already. The trial, its
4-bit base and the store stay real; RayBackend keeps its own tests (tests/test_sweep_ray.py, test_faults.py).
"""

from __future__ import annotations

import importlib
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.backends.backend import Outcome
from orchestrator.backends.ray_backend import DEFAULT_TRIAL_FN
from trainer import events as ev
from trainer.checkpoints import last_checkpoint, resume_key

_STOP = object()


class InlineBackend:
    """Implements orchestrator.backends.backend.Backend. Trials report Started and Attempt first, as RayBackend's
    workers do; a trial that raises ends with the error's type and message and its kind (out of memory, ...)."""

    def __init__(self, trial_fn: str = DEFAULT_TRIAL_FN, cpus: int = 2):
        module, _, name = trial_fn.partition(":")
        self.run_trial = getattr(importlib.import_module(module), name)
        self.cpus = cpus
        self._queue: queue.Queue = queue.Queue()
        self._pending: set[Any] = set()
        self._cancelled: set[Any] = set()
        self._done: list[Outcome] = []
        self._events: list[tuple[Any, ev.Event]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="inline trials", daemon=True)
        self._thread.start()

    def total(self, resource: str) -> float:
        return float(self.cpus if resource == "CPU" else 0)

    largest_node = total

    def free_gpu_bytes(self, gpus: float) -> int:
        raise AssertionError("InlineBackend has no GPU: the driver asked for one")

    def share(self, value: Any) -> Any:
        return value

    def submit(self, key: Any, config, data_ref: Any, out_dir: Path, cpus: int, gpus: float) -> None:
        with self._changed:
            self._pending.add(key)
        self._queue.put((key, config, data_ref, out_dir, cpus))

    def submit_pack(self, keys, configs, data_refs, out_dirs, cpus: int, gpus: float) -> None:
        raise AssertionError("InlineBackend runs trials alone: use RayBackend for packs")

    def cancel(self, key: Any) -> None:
        """A queued trial ends at once, as killed; one already running cannot be stopped from here."""
        with self._changed:
            if key in self._pending:
                self._cancelled.add(key)

    def is_pending(self, key: Any) -> bool:
        with self._changed:
            return key in self._pending

    @property
    def running(self) -> int:
        with self._changed:
            return len(self._pending)

    def finished(self, timeout_s: float) -> list[Outcome]:
        with self._changed:
            if not self._done:
                self._changed.wait(timeout_s)
            done, self._done = self._done, []
            self._pending -= {o.key for o in done}
            return done

    def drain_events(self) -> list[tuple[Any, ev.Event]]:
        with self._changed:
            drained, self._events = self._events, []
            return drained

    def shutdown(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _work(self) -> None:
        for item in iter(self._queue.get, _STOP):
            outcome = self._run(*item)
            with self._changed:
                self._done.append(outcome)
                self._changed.notify_all()

    def _run(self, key: Any, config, data, out_dir: Path, cpus: int) -> Outcome:
        import torch

        if key in self._cancelled:
            return Outcome(key, error="the worker was killed (cancelled by the driver)",
                           failure=ev.FailureKind.WORKER_DIED)
        threads, start = torch.get_num_threads(), time.perf_counter()
        try:  # whatever fails is this trial's outcome: the thread goes on to the next
            out_dir.mkdir(parents=True, exist_ok=True)
            self._report(key, ev.Started(f"{socket.gethostname()}:{os.getpid()}", "inline"))
            self._report(key, ev.Attempt(last_checkpoint(out_dir, resume_key(config, data))[1]))
            result = self.run_trial(config, data, out_dir, lambda event: self._report(key, event), cpus)
        except Exception as exc:
            return Outcome(key, error=f"{type(exc).__name__}: {exc}", failure=ev.failure_kind(exc))
        finally:
            torch.set_num_threads(threads)  # the trial set its own; the tests after it get this process's back
        return Outcome(key, result=result, runtime_s=time.perf_counter() - start)

    def _report(self, key: Any, event: ev.Event) -> None:
        with self._changed:
            self._events.append((key, event))
