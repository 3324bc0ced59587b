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

from orchestrator.backends.backend import Outcome
from orchestrator.quiet import QUIET_ENV
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
        self._leaving: dict[Any, str] = {}

    def put(self, item: tuple[Any, dict]) -> None:
        self._events.append(item)

    def drain(self) -> list[tuple[Any, dict]]:
        drained, self._events = self._events, []
        return drained

    def ask_to_leave(self, key: Any, reason: str) -> None:
        """The driver ends one trial of a pack; the pack's worker reads it at its next step."""
        self._leaving[key] = reason

    def leaving(self, keys: list) -> dict[Any, str]:
        """The requests for `keys` since the last call (each is answered once)."""
        return {k: self._leaving.pop(k) for k in keys if k in self._leaving}


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


@ray.remote(max_calls=1, max_retries=0)
def _free_gpu_bytes() -> int:
    """Free memory of the GPU Ray gives this task, measured there (a fresh process, as a trial's worker is)."""
    import torch

    return int(torch.cuda.mem_get_info()[0])


# One worker, several trials on one base (trainer.lockstep); each trial still reports under its own key.
@ray.remote(max_calls=1, max_retries=0)
def _pack_task(keys: list, configs: list, out_dirs: list[str], num_threads: int, events, *datas):
    """`datas` (each trial's) are top-level arguments so that Ray resolves them before the task starts."""
    from trainer.lockstep import PackTrial, run_pack

    outs = [Path(d) for d in out_dirs]
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
    _redirect_output(outs[0].parent / f"pack-{'-'.join(map(str, keys))}.log")
    reports = [_Reporter(key, events) for key in keys]
    worker = f"{socket.gethostname()}:{os.getpid()}, pack of {len(keys)}"  # `sweep status` shows who shares it
    for report, config, data, out in zip(reports, configs, datas, outs):
        report(ev.Started(worker, ray.get_runtime_context().get_node_id()))
        report(ev.Attempt(last_checkpoint(out, resume_key(config, data))[1]))
    by_key, left = dict(zip(keys, reports)), set()

    def on_leave(key, error: BaseException) -> None:  # its outcome now: the pack goes on without it
        left.add(key)
        by_key[key](ev.Left(str(error), ev.failure_kind(error).value))

    start = time.perf_counter()
    trials = [PackTrial(*item) for item in zip(keys, configs, datas, outs, reports)]
    try:
        results = run_pack(trials, num_threads, _LeavePoll(events, keys), on_leave)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        for report in reports:
            report.flush()
    runtime_s = time.perf_counter() - start
    return {key: ("left",) if key in left else ("failed", str(r), ev.failure_kind(r).value)
            if isinstance(r, BaseException) else ("ok", r, runtime_s) for key, r in results.items()}


class _LeavePoll:
    """Which of a pack's trials the driver asked to leave, read without blocking: one request in flight, its
    answer taken when ready (a blocked `ray.get` would give the worker's CPU back to the scheduler)."""

    def __init__(self, events, keys: list):
        self.events, self.keys, self.pending = events, keys, None

    def __call__(self) -> dict:
        asked = {}
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=0)
            if not ready:
                return {}
            asked = ray.get(self.pending)
        self.pending = self.events.leaving.remote(self.keys)
        return asked


def _redirect_output(path: Path) -> None:
    """Send this worker's stdout/stderr (including C-level writes) to the trial's own log file."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)


class RayBackend:
    """The `orchestrator.backends.backend.Backend` on Ray. `trial_fn` is `module:function` with run_trial's
    signature, imported in each worker."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, trial_fn: str = DEFAULT_TRIAL_FN):
        self.trial_fn = trial_fn
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            env = QUIET_ENV | {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            # "local": a new instance, never one that `ray start` left on this machine (--address picks that).
            ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR", runtime_env={"env_vars": env})
        self.events = _Events.remote()
        self._pending: dict[Any, list] = {}  # object ref -> the keys of the trials it runs (one, or a pack's)
        self._left: list[Outcome] = []  # trials that left their pack before it ended: outcomes not yet returned

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
        self._pending[ref] = [key]

    def submit_pack(self, keys: list, configs: list, data_refs: list, out_dirs: list[Path], cpus: int,
                    gpus: float) -> None:
        """Start the trials `keys` together in one worker, on one base (trainer.lockstep)."""
        ref = _pack_task.options(num_cpus=cpus, num_gpus=gpus, name=f"pack {keys}").remote(
            keys, configs, [str(d) for d in out_dirs], cpus, self.events, *data_refs)
        self._pending[ref] = list(keys)

    def cancel(self, key: Any) -> None:
        """End trial `key`: kill its worker, or ask its pack to go on without it; its outcome arrives as an error."""
        for ref, keys in self._pending.items():
            if key in keys and len(keys) == 1:
                ray.cancel(ref, force=True)  # force: the trial runs C code that never checks for a soft cancel
            elif key in keys:
                self.events.ask_to_leave.remote(key, "asked to leave its pack by the driver")

    def is_pending(self, key: Any) -> bool:
        return any(key in keys for keys in self._pending.values())

    @property
    def running(self) -> int:
        """Workers running: one trial each, or one pack each."""
        return len(self._pending)

    def finished(self, timeout_s: float) -> list[Outcome]:
        """Trials that ended within `timeout_s`, successfully or not (or left their pack)."""
        left, self._left = self._left, []
        if not self._pending:
            return left
        done, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0 if left else timeout_s)
        return left + [o for ref in done for o in self._outcomes(ref, self._pending.pop(ref))]

    def free_gpu_bytes(self, gpus: float) -> int:
        return ray.get(_free_gpu_bytes.options(num_gpus=gpus).remote())

    def drain_events(self) -> list[tuple[Any, ev.Event]]:
        drained = []
        for key, raw in ray.get(self.events.drain.remote()):
            event = ev.decode(raw)
            if isinstance(event, ev.Left):  # the trial's outcome, not a point
                self._left.append(Outcome(key, error=event.error, failure=ev.FailureKind(event.failure)))
                self._pending = {ref: [k for k in keys if k != key] for ref, keys in self._pending.items()}
            else:
                drained.append((key, event))
        return drained

    def shutdown(self) -> None:
        if self._owns_ray:
            ray.shutdown()

    @staticmethod
    def _outcomes(ref: Any, keys: list) -> list[Outcome]:
        try:
            returned = ray.get(ref)
        except Exception as exc:  # RayTaskError (trial raised), WorkerCrashedError (process died), OOM
            error = "\n".join(str(exc).strip().splitlines()[-_ERROR_LINES:])
            return [Outcome(key, error=error, failure=ev.failure_kind(exc)) for key in keys]
        if isinstance(returned, tuple):  # one trial's (result, runtime_s)
            return [Outcome(keys[0], result=returned[0], runtime_s=returned[1])]
        outcomes = []
        for key in keys:  # a pack's: each trial's own; one that left had its outcome when it left
            match returned[key]:
                case ("ok", result, runtime_s):
                    outcomes.append(Outcome(key, result=result, runtime_s=runtime_s))
                case ("failed", error, failure):
                    outcomes.append(Outcome(key, error=error, failure=ev.FailureKind(failure)))
        return outcomes
