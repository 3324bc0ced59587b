"""The sweep driver: plan -> prepare (data, model cache) -> register -> run on workers -> record.

The driver is the only writer of the results store, of the Optuna study and of TensorBoard events;
workers only report. A trial already completed with the same content key is reused, not re-run;
anything a killed driver left pending or running is run again. Every trial ends as completed,
failed (its error kept), pruned or interrupted (with the reason), its partial curves kept.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from evaluation.rouge import resolve_tokenizer
from orchestrator.control import HEARTBEAT_INTERVAL_S, StopFlag, SweepBusy, driver_alive, driver_id
from orchestrator.plan import PlannedTrial, content_key, expand, planned_trial
from orchestrator.progress import Progress
from orchestrator.spec import ResourcesConfig, SweepSpec, to_plain
from orchestrator.study import Study
from results.store import Store
from results.tensorboard import TensorBoardSink
from trainer.config import TrialConfig
from trainer.data import DATA_DIR_ENV, TrialData, load_trial_data, split_source
from trainer.models import resolve_model_path


@dataclass
class SweepOutcome:
    sweep: str
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    """Why the sweep stopped before its end (a signal, `sweep stop`), else None."""
    wall_s: float = 0.0
    slots: int = 1
    """Trials that could run at once on the resources Ray had."""
    runtimes_s: dict[str, float] = field(default_factory=dict)


@dataclass
class _Running:
    trial_id: int
    planned: PlannedTrial
    started: bool = False
    ending: tuple[str, str] | None = None
    """(status, reason) when the driver ended it: pruned, or interrupted by a stop."""
    retried: bool = False
    done: bool = False
    """Its outcome is recorded; late events (a killed worker's last ones) add curve points only."""


class PrepareError(Exception):
    """A model or dataset could not be made ready; raised before Ray starts or the store is written."""


def run_sweep(spec: SweepSpec, store: Store, backend, stream: TextIO = sys.stderr,
              show_progress: bool = True, prepared: tuple[list[PlannedTrial], dict[str, TrialData]] | None = None,
              stop: StopFlag | None = None) -> SweepOutcome:
    """Run every trial of `spec` (resuming what a previous run left) until done or stopped."""
    start = time.perf_counter()
    plan, data = prepared or prepare(spec)
    seen = live_driver_check(store, spec.name)
    sweep_dir = Path(spec.output.run_dir) / spec.name
    sweep_id = store.open_sweep(spec.name, to_plain(spec), str(sweep_dir), _notes(data))
    if not store.claim_sweep(sweep_id, driver_id(), seen):
        raise SweepBusy(f"sweep {spec.name!r} was claimed by another driver just now; nothing was run")
    try:
        driver = _Driver(spec, store, backend, sweep_id, sweep_dir, data, Progress(0, 1, stream, show_progress))
        driver.run(plan, stop if stop is not None else StopFlag())
    finally:
        store.release_sweep(sweep_id)
    driver.outcome.wall_s = time.perf_counter() - start
    return driver.outcome


def live_driver_check(store: Store, name: str) -> str | None:
    """The recorded driver when it is gone (so it may be replaced); SweepBusy while it lives."""
    driver, heartbeat_at = store.driver_of(name) or (None, None)
    if driver is None:
        return None
    if driver_alive(driver, heartbeat_at):
        raise SweepBusy(f"sweep {name!r} is being run by {driver} (heartbeat {heartbeat_at:%H:%M:%S}"
                        f" UTC); nothing was run. Fix: wait, or `sweep stop {name}` first")
    return driver


def prepare(spec: SweepSpec) -> tuple[list[PlannedTrial], dict[str, TrialData]]:
    """The plan, each distinct dataset loaded once and each distinct model converted once."""
    plan = expand(spec)
    targets = plan + ([planned_trial(spec, {})] if spec.search.type == "optuna" else [])
    models = {t.config.model.name for t in targets}
    models.update((spec.search.space["model.name"].choices or []) if "model.name" in spec.search.space else [])
    for name in sorted(models):
        try:
            resolve_model_path(name)
        except Exception as exc:  # conversion or download: any failure means the sweep cannot start
            raise PrepareError(f"model.name {name!r} could not be prepared: {type(exc).__name__}: {exc}") from exc
    data: dict[str, TrialData] = {}
    for trial in targets:
        key = _data_key(trial)
        if key not in data:
            data[key] = _load_data(trial)
    return plan, data


def _load_data(trial: PlannedTrial) -> TrialData:
    cfg = trial.config.dataset
    try:
        data = load_trial_data(cfg)
    except Exception as exc:  # file, hub or parsing errors alike stop the sweep before it starts
        sources = " and ".join(split_source(cfg, which).describe() for which in ("train", "eval"))
        raise PrepareError(f"dataset could not be loaded from {sources}: {type(exc).__name__}: {exc}. "
                           f"Fix: point {DATA_DIR_ENV} or dataset.mirror_dir at a local mirror, or use "
                           "dataset.train_file/eval_file") from exc
    if not data.train or not data.eval:
        raise PrepareError(f"dataset has {len(data.train)} training and {len(data.eval)} eval rows; both must be > 0")
    try:
        resolve_tokenizer(trial.config.scoring.tokenizer, [r for e in data.eval for r in e.references])
    except ValueError as exc:
        raise PrepareError(f"scoring.tokenizer: {exc}") from exc
    return data


def register(store: Store, sweep_id: int, trial: PlannedTrial, data: TrialData) -> tuple[int, bool]:
    return store.register_trial(sweep_id, trial.name, trial.kind, trial.params, dataclasses.asdict(trial.config),
                                content_key(trial.config, data), trial.study_trial)


def placement(resources: ResourcesConfig, backend) -> tuple[int, float, int]:
    """(CPUs per trial, GPUs per trial, concurrent trials): one GPU per trial where Ray has GPUs."""
    gpus = resources.gpus_per_trial if backend.total("GPU") > 0 else 0.0
    slots = int(backend.total("CPU") // resources.cpus_per_trial)
    if gpus:
        slots = min(slots, int(backend.total("GPU") // gpus))
    return resources.cpus_per_trial, gpus, max(slots, 1)


def is_out_of_memory(error: str) -> bool:
    """torch's CUDA OutOfMemoryError, or Ray's memory monitor killing the worker (host memory)."""
    return "OutOfMemoryError" in error or "CUDA out of memory" in error or "running low on memory" in error


def halved_batch(config: TrialConfig) -> TrialConfig | None:
    """Half the micro batch, twice the accumulation (same effective batch); None at micro batch 1."""
    t = config.training
    if t.micro_batch_size < 2:
        return None
    return dataclasses.replace(config, training=dataclasses.replace(
        t, micro_batch_size=t.micro_batch_size // 2, gradient_accumulation_steps=t.gradient_accumulation_steps * 2))


class _Driver:
    """Keeps `slots` trials running, records what they report, and ends each in a truthful state."""

    def __init__(self, spec: SweepSpec, store: Store, backend, sweep_id: int, sweep_dir: Path,
                 data: dict[str, TrialData], progress: Progress):
        self.spec, self.store, self.backend, self.sweep_id, self.sweep_dir = spec, store, backend, sweep_id, sweep_dir
        self.data, self.progress = data, progress
        self.cpus, self.gpus, self.slots = placement(spec.resources, backend)
        self.outcome = SweepOutcome(spec.name, slots=self.slots)
        self.shared = {key: backend.share(value) for key, value in data.items()}
        self.study = Study(spec, store.url) if spec.search.type == "optuna" else None
        self.trials: dict[int, _Running] = {}
        self.queue: deque[_Running] = deque()
        self.stopping: str | None = None
        self._next_beat = self._next_poll = 0.0

    def run(self, plan: list[PlannedTrial], stop: StopFlag) -> None:
        self.progress.total, self.progress.slots = len(plan), self.slots
        if self.study is not None:
            self.progress.total += self.study.settings.n_trials
        for trial in plan:
            self._add(trial)
        self.tensorboard = TensorBoardSink(self.sweep_dir / "tensorboard")
        try:
            while self._fill() or self.backend.running:
                finished = self.backend.finished(timeout_s=1.0)
                self._record_events(self.backend.drain_events())  # before finals
                for result in finished:
                    self._record_outcome(self.trials[result.key], result)
                self._control(stop)
                self.progress.show()
        except BaseException:  # a second Ctrl-C, or a bug: leave no trial claiming to run
            self.stopping = self.stopping or "the driver aborted"
            for trial in self.trials.values():
                if not trial.done and trial not in self.queue:
                    self.store.end_trial(trial.trial_id, "interrupted", self.stopping)
            raise
        finally:
            self._interrupt_queued()
            self.tensorboard.close()
            self.progress.close()

    def _add(self, trial: PlannedTrial) -> None:
        """Register a trial (reusing a finished one) and queue it."""
        trial_id, done = register(self.store, self.sweep_id, trial, self._data(trial))
        if done:
            self.outcome.reused.append(trial.name)
            self.progress.update(skipped=1)
            if self.study is not None and trial.study_trial is not None:
                status, metrics = self.store.trial_result(trial_id)  # the driver died before telling the study
                self.study.tell(trial.study_trial, status, metrics)
            return
        self.trials[trial_id] = _Running(trial_id, trial)
        self.queue.append(self.trials[trial_id])

    def _fill(self) -> bool:
        """Start queued (then study-proposed) trials while slots are free; False when nothing is left."""
        while not self.stopping and self.backend.running < self.slots:
            if not self.queue and self.study is not None:
                proposed = self.study.ask()
                if proposed is None:
                    break
                self._add(proposed)
                continue
            if not self.queue:
                break
            trial = self.queue.popleft()
            self.backend.submit(trial.trial_id, trial.planned.config, self.shared[_data_key(trial.planned)],
                                self.sweep_dir / "trials" / trial.planned.name, self.cpus, self.gpus)
        return bool(self.queue) and not self.stopping

    def _data(self, trial: PlannedTrial) -> TrialData:
        key = _data_key(trial)
        if key not in self.data:  # a study over dataset.* keys: loaded when first proposed
            self.data[key] = _load_data(trial)
            self.shared[key] = self.backend.share(self.data[key])
        return self.data[key]

    def _record_events(self, events: list[tuple[int, dict]]) -> None:
        points: dict[int, list[tuple[str, int, float]]] = {}
        for trial_id, event in events:
            trial = self.trials[trial_id]
            if event["event"] == "started" and not trial.started and not trial.done:
                trial.started = True
                self.store.mark_running(trial_id, event["worker"])
                self.progress.update(running=1)
            elif event["event"] == "environment":
                self.store.set_environment(trial_id, event["environment"])
            elif event["event"] == "metric":
                points.setdefault(trial_id, []).append((event["name"], event["step"], event["value"]))
                self.tensorboard.scalar(trial.planned.name, event["name"], event["step"], event["value"])
                self._maybe_prune(trial, event)
        for trial_id, batch in points.items():
            self.store.add_metrics(trial_id, batch)

    def _maybe_prune(self, trial: _Running, event: dict) -> None:
        number = trial.planned.study_trial
        if self.study is None or number is None or trial.ending or trial.done or not self.study.pruning:
            return
        metric = self.study.settings.objectives[0].metric
        if event["name"] != f"eval/{metric}" or event["step"] >= trial.planned.config.training.max_steps:
            return  # only interim evaluations; the final one is the trial's result
        if self.study.report(number, event["step"], event["value"]):
            trial.ending = ("pruned", f"pruned by the {self.study.settings.pruner} pruner at step {event['step']}: "
                                      f"eval/{metric}={event['value']:.4f}")
            self.backend.cancel(trial.trial_id)

    def _record_outcome(self, trial: _Running, result) -> None:
        name, running = trial.planned.name, -1 if trial.started else 0
        trial.started, trial.done = False, True
        if trial.ending is not None and result.error is not None:  # it may have finished before the kill
            status, reason = trial.ending
            self.store.end_trial(trial.trial_id, status, reason)
            getattr(self.outcome, status).append(name)
            self.progress.update(running=running, **{status: 1})
            self._tell(trial, status, {})
        elif result.error is not None:
            if self._retry(trial, result.error):
                trial.done = False
                self.progress.update(running=running)
                return
            self.store.fail_trial(trial.trial_id, result.error, result.runtime_s)
            self.outcome.failed.append(name)
            self.progress.update(failed=1, running=running)
            self._tell(trial, "failed", {})
        else:
            r = result.result
            self.store.complete_trial(trial.trial_id, r.metrics, r.predictions, result.runtime_s, r.timings_s,
                                      r.adapter_dir, r.scoring, r.environment)
            self.tensorboard.hparams(name, {"kind": trial.planned.kind, **trial.planned.params}, r.metrics)
            self.outcome.completed.append(name)
            self.outcome.runtimes_s[name] = result.runtime_s
            self.progress.update(done=1, running=running, runtime_s=result.runtime_s)
            self._tell(trial, "completed", r.metrics)

    def _retry(self, trial: _Running, error: str) -> bool:
        """Out of memory, allowed by the spec, not yet retried: run again with half the micro batch."""
        smaller = halved_batch(trial.planned.config)
        if trial.retried or smaller is None or not self.spec.resources.retry_out_of_memory \
                or not is_out_of_memory(error):
            return False
        t = smaller.training
        reason = (f"out of memory; retried with micro_batch_size={t.micro_batch_size}, "
                  f"gradient_accumulation_steps={t.gradient_accumulation_steps}. First error: {error[-500:]}")
        self.store.retry_trial(trial.trial_id, dataclasses.asdict(smaller), reason)
        trial.planned, trial.retried = dataclasses.replace(trial.planned, config=smaller), True
        self.queue.appendleft(trial)
        return True

    def _tell(self, trial: _Running, status: str, metrics: dict[str, float]) -> None:
        if self.study is not None and trial.planned.study_trial is not None:
            self.study.tell(trial.planned.study_trial, status, metrics)

    def _control(self, stop: StopFlag) -> None:
        """Heartbeat, and act on Ctrl-C / SIGTERM and on `sweep stop` requests from other terminals."""
        now = time.monotonic()
        if now >= self._next_beat:
            self.store.heartbeat(self.sweep_id)
            self._next_beat = now + HEARTBEAT_INTERVAL_S
        if stop and not self.stopping:
            self._stop_all(f"interrupted by {signal.Signals(stop.signal).name}")
        if now < self._next_poll:
            return
        self._next_poll = now + 2.0
        whole, trial_ids = self.store.stop_requests(self.sweep_id)
        if whole and not self.stopping:
            self._stop_all("stopped by `sweep stop`")
        for trial_id in trial_ids & set(self.trials):
            self._stop_trial(self.trials[trial_id], "stopped by `sweep stop` for this trial")

    def _stop_all(self, reason: str) -> None:
        self.stopping = self.outcome.stopped_by = reason
        for trial in list(self.trials.values()):
            self._stop_trial(trial, reason)

    def _stop_trial(self, trial: _Running, reason: str) -> None:
        if trial in self.queue:
            self.queue.remove(trial)
            self._end_unstarted(trial, reason)
        elif trial.ending is None and self.backend.is_pending(trial.trial_id):
            trial.ending = ("interrupted", reason)
            self.backend.cancel(trial.trial_id)

    def _interrupt_queued(self) -> None:
        while self.queue:
            self._end_unstarted(self.queue.popleft(), self.stopping or "the driver stopped before it started")

    def _end_unstarted(self, trial: _Running, reason: str) -> None:
        trial.done = True
        self.store.end_trial(trial.trial_id, "interrupted", reason)
        self.outcome.interrupted.append(trial.planned.name)
        self.progress.update(interrupted=1)
        self._tell(trial, "interrupted", {})


def _notes(data: dict[str, TrialData]) -> dict:
    first = next(iter(data.values()))
    notes = {"eval_examples": len(first.eval), "train_examples": len(first.train),
             "reference_columns": ", ".join(first.reference_columns)}
    if any(first.skipped_rows):
        notes["skipped_rows"] = (f"{first.skipped_rows[0]} train, {first.skipped_rows[1]} eval "
                                 "(empty or missing dialogue or summary)")
    return notes


def _data_key(trial: PlannedTrial) -> str:
    return repr(trial.config.dataset)
