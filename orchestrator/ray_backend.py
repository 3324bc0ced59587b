"""The only module that imports Ray: places trials on workers and streams their events to the driver.

Each trial runs as a Ray task in a fresh worker process (`max_calls=1`), so the memory it held
(host or GPU) is returned when it ends. Trials report through a Ray queue; the driver alone
reads it and writes the store, which is why the same code works when workers are other nodes.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import ray

from orchestrator.backend import Outcome
from orchestrator.environment import QUIET_ENV
from trainer import events as ev
from trainer.checkpoints import last_checkpoint, resume_key

_FORWARDED_ENV = ("QLORA_SWEEP_CACHE", "QLORA_SWEEP_DATA_DIR", "HF_HOME", "HF_HUB_OFFLINE")
_ERROR_LINES = 25
DEFAULT_TRIAL_FN = "trainer.trial:run_trial"


@ray.remote(num_cpus=0)
class _Events:
    """The trials' events, in order. A synchronous actor runs one caller's calls in the order they were sent;
    an async one (ray.util.queue's) may reorder them, and a resumed trial replays hundreds at once."""

    def __init__(self):
        self._events: list[tuple[Any, dict]] = []

    def put(self, item: tuple[Any, dict]) -> None:
        self._events.append(item)

    def drain(self) -> list[tuple[Any, dict]]:
        drained, self._events = self._events, []
        return drained


class _Reporter:
    """Sends events without waiting. A task blocked in `ray.get` gives its CPU back to the scheduler,
    which would start one more trial than there are cores."""

    def __init__(self, key: Any, events):
        self.key, self.events, self.last = key, events, None

    def __call__(self, event: ev.Event) -> None:
        self.last = self.events.put.remote((self.key, ev.encode(event)))

    def flush(self) -> None:
        if self.last is not None:
            ray.get(self.last)  # every event is in the queue before the result is returned


# max_retries=0: Ray would silently re-run a trial whose worker died; the driver decides instead.
@ray.remote(max_calls=1, max_retries=0)
def _trial_task(key, config, data, out_dir: str, num_threads: int, events, trial_fn: str):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _redirect_output(out / "trial.log")
    report = _Reporter(key, events)
    report(ev.Started(f"{socket.gethostname()}:{os.getpid()}", ray.get_runtime_context().get_node_id()))
    # Before the trial reports a point: the driver drops the old attempt's, which this one reports again.
    report(ev.Attempt(last_checkpoint(out, resume_key(config, data))[1]))
    module, _, name = trial_fn.partition(":")
    run_trial = getattr(importlib.import_module(module), name)  # imported in the worker, never the driver
    start = time.perf_counter()
    try:
        result = run_trial(config, data, out, report, num_threads)
    except BaseException:
        traceback.print_exc()  # into trial.log as well as back to the driver
        raise
    finally:
        report.flush()
    return result, time.perf_counter() - start


def _redirect_output(path: Path) -> None:
    """Send this worker's stdout/stderr (including C-level writes) to the trial's own log file."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)


class RayBackend:
    """The `orchestrator.backend.Backend` on Ray. `trial_fn` is `module:function` with run_trial's signature, imported in each worker."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, trial_fn: str = DEFAULT_TRIAL_FN):
        self.trial_fn = trial_fn
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            env = QUIET_ENV | {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            # "local": a new instance, never one that `ray start` left on this machine (--address picks that).
            ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR", runtime_env={"env_vars": env})
        self.events = _Events.remote()
        self._pending: dict[Any, Any] = {}  # object ref -> trial key

    def total(self, resource: str) -> float:
        return float(ray.cluster_resources().get(resource, 0))

    def largest_node(self, resource: str) -> float:
        """The most of `resource` one live node has: a task needing more is never scheduled."""
        return max((float(n["Resources"].get(resource, 0)) for n in ray.nodes() if n["Alive"]), default=0.0)

    def share(self, value: Any) -> Any:
        """Put a large read-only value (the dataset) in the object store once for every trial."""
        return ray.put(value)

    def submit(self, key: Any, config: Any, data_ref: Any, out_dir: Path, cpus: int, gpus: float) -> None:
        ref = _trial_task.options(num_cpus=cpus, num_gpus=gpus, name=f"trial {key}").remote(
            key, config, data_ref, str(out_dir), cpus, self.events, self.trial_fn)
        self._pending[ref] = key

    def cancel(self, key: Any) -> None:
        """Kill the worker running trial `key`; its outcome then arrives as an error."""
        for ref, pending_key in self._pending.items():
            if pending_key == key:
                ray.cancel(ref, force=True)  # force: the trial runs C code that never checks for a soft cancel

    def is_pending(self, key: Any) -> bool:
        return key in self._pending.values()

    @property
    def running(self) -> int:
        return len(self._pending)

    def finished(self, timeout_s: float) -> list[Outcome]:
        """Trials that ended within `timeout_s`, successfully or not."""
        if not self._pending:
            return []
        done, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout_s)
        return [self._outcome(ref, self._pending.pop(ref)) for ref in done]

    def drain_events(self) -> list[tuple[Any, ev.Event]]:
        return [(key, ev.decode(raw)) for key, raw in ray.get(self.events.drain.remote())]

    def shutdown(self) -> None:
        if self._owns_ray:
            ray.shutdown()

    @staticmethod
    def _outcome(ref: Any, key: Any) -> Outcome:
        try:
            result, runtime_s = ray.get(ref)
        except Exception as exc:  # RayTaskError (trial raised), WorkerCrashedError (process died), OOM
            return Outcome(key, error="\n".join(str(exc).strip().splitlines()[-_ERROR_LINES:]),
                           failure=ev.failure_kind(exc))
        return Outcome(key, result=result, runtime_s=runtime_s)
