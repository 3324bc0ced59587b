"""The sweep driver: plan -> prepare (data, model cache) -> register -> run on workers -> record.

The driver is the only writer of the results store, of the Optuna study and of TensorBoard events;
workers only report. A trial already completed with the same content key is reused, not re-run;
anything a killed driver left pending or running is run again. Every trial ends as completed,
failed (its error kept), pruned or interrupted (with the reason), its partial curves kept.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from evaluation.rouge import resolve_tokenizer
from orchestrator.control import HEARTBEAT_INTERVAL_S, StopFlag, SweepBusy, driver_alive, driver_id
from orchestrator.budget import budget_problems
from orchestrator.plan import PlannedTrial, content_key, expand, planned_trial, run_problems, with_baseline
from orchestrator.progress import Progress
from orchestrator.spec import ResourcesConfig, SpecError, SweepSpec, to_plain
from orchestrator.study import Study
from results.store import Store
from results.tensorboard import TensorBoardSink
from trainer import events as ev
from trainer import paraphrase
from trainer.augment import training_examples
from trainer.config import PAGED_OPTIMIZERS, AugmentationConfig, ConfigProblem, TrialConfig
from trainer.data import DATA_DIR_ENV, TrialData, load_trial_data, split_source
from trainer.models import cache_root, model_identity, resolve_model_path


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
    started_at: float = 0.0
    """time.monotonic() when its worker started it (for resources.trial_timeout_s)."""
    last_event_at: float = 0.0
    """time.monotonic() of its last event (for resources.stall_timeout_s)."""
    where: dict = field(default_factory=dict)
    """The cluster node its worker runs on, added to the environment it reports."""
    done: bool = False
    """Its outcome is recorded; late events (a killed worker's last ones) add curve points only."""
    phase: str = ""
    """The trial step it reported last (load, adapt, train, evaluate, save): the final eval comes in `evaluate`."""


class PrepareError(Exception):
    """A model or dataset could not be made ready; raised before Ray starts or the store is written."""


def run_sweep(spec: SweepSpec, store: Store, backend, stream: TextIO = sys.stderr,
              show_progress: bool = True, prepared: tuple[list[PlannedTrial], dict[str, TrialData]] | None = None,
              stop: StopFlag | None = None) -> SweepOutcome:
    """Run every trial of `spec` (resuming what a previous run left) until done or stopped."""
    start = time.perf_counter()
    plan, data = prepared or prepare(spec)
    check_placement(spec.resources, backend, {spec.training.optimizer} | {t.config.training.optimizer for t in plan})
    seen = live_driver_check(store, spec.name)
    sweep_dir = Path(spec.output.run_dir).resolve() / spec.name  # absolute: read commands run from anywhere
    me = driver_id()
    sweep_id = store.open_sweep(spec.name, to_plain(spec), str(sweep_dir), _notes(data), me, seen)
    if sweep_id is None:
        raise SweepBusy(f"sweep {spec.name!r} was claimed by another driver just now; nothing was run")
    try:
        driver = _Driver(spec, store, backend, sweep_id, sweep_dir, data, Progress(0, 1, stream, show_progress))
        driver.run(plan, stop if stop is not None else StopFlag())
    finally:
        store.release_sweep(sweep_id, me)
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


class Unschedulable(Exception):
    """A trial asks for more CPUs or GPUs than any node of the Ray cluster has: it would wait forever."""


def check_placement(resources: ResourcesConfig, backend, optimizers: set[str] = frozenset()) -> None:
    """Raise Unschedulable when one trial cannot fit on the largest node (Ray would queue it silently), or
    needs a GPU the cluster does not have."""
    problems = []
    paged = sorted(optimizers & set(PAGED_OPTIMIZERS))
    if paged and backend.total("GPU") == 0:
        problems.append(f"training.optimizer: a paged optimizer pages its state out of GPU memory, and this Ray "
                        f"cluster has no GPU; given {', '.join(paged)}; allowed: adamw, adamw_8bit. "
                        f"Fix: set training.optimizer: adamw_8bit")
    cpus = backend.largest_node("CPU")
    if resources.cpus_per_trial > cpus:
        problems.append(f"resources.cpus_per_trial: a trial must fit on one node; given {resources.cpus_per_trial}; "
                        f"allowed: 1 to {cpus:g} (the largest node's CPUs). Fix: lower cpus_per_trial")
    gpus = backend.largest_node("GPU")
    if backend.total("GPU") > 0 and resources.gpus_per_trial > gpus:
        problems.append(f"resources.gpus_per_trial: a trial must fit on one node; given {resources.gpus_per_trial:g}; "
                        f"allowed: 0 to {gpus:g} (the largest node's GPUs). Fix: lower gpus_per_trial")
    if problems:
        raise Unschedulable("; ".join(problems))


def prepare(spec: SweepSpec) -> tuple[list[PlannedTrial], dict[str, TrialData]]:
    """The plan, each distinct dataset loaded once and each distinct model converted once; every run's
    prompt checked against its token budget with the model's real tokenizer (SpecError if one fails)."""
    plan = expand(spec)
    targets = plan + ([planned_trial(spec, {})] if spec.search.type == "optuna" else [])
    models = {t.config.model.name for t in targets}
    models.update((spec.search.space["model.name"].choices or []) if "model.name" in spec.search.space else [])
    for name in sorted(models):
        try:
            resolve_model_path(name)
        except Exception as exc:  # conversion or download: any failure means the sweep cannot start
            raise PrepareError(f"model.name {name!r} could not be prepared: {type(exc).__name__}: {exc}") from exc
    try:
        problems = budget_problems([t.config for t in targets], [t.name for t in targets])
    except Exception as exc:  # a hub tokenizer offline, a broken local folder: the trials could not load it either
        raise PrepareError(f"the prompts' token budgets could not be checked, because a tokenizer did not load: "
                           f"{type(exc).__name__}: {exc}") from exc
    if problems:
        raise SpecError(spec.name, problems)
    data: dict[str, TrialData] = {}
    # The largest paraphrase share first: a smaller share's rows are a subset, then read from the cache.
    for trial in sorted(targets, key=lambda t: -t.config.augmentation.paraphrase):
        key = _data_key(trial)
        if key not in data:
            data[key] = _load_data(trial)
    problems = [p for t in targets for p in _epoch_problems(t, data[_data_key(t)])]
    if problems:
        raise SpecError(spec.name, problems)
    return plan, data


def _epoch_problems(trial: PlannedTrial, data: TrialData) -> list[ConfigProblem]:
    """An epoch budget's step checks on the most rows the trial can have (rows too long for it only shorten
    it; the trial checks its own count again)."""
    t = trial.config.training
    if t.epochs is None or trial.config.zero_shot:
        return []
    rows = len(training_examples(data, trial.config.augmentation))
    return t.step_problems("training", t.total_steps(rows), f" (at {trial.name}: {rows} training rows at most)")


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
    return _with_paraphrases(data, trial.config.augmentation) if trial.config.augmentation.paraphrase else data


def _with_paraphrases(data: TrialData, aug: AugmentationConfig) -> TrialData:
    """`data` with its paraphrased training rows, generated here (once, before any trial) or read from the cache."""
    try:
        path = resolve_model_path(aug.paraphrase_model)
        made_by = paraphrase.provenance(aug, model_identity(aug.paraphrase_model))
        cache = paraphrase.ParaphraseCache(cache_root(), made_by)
        rows, generated = paraphrase.paraphrased_examples(data.train, aug, cache,
                                                          lambda: paraphrase.load_generator(path, aug))
    except Exception as exc:  # a missing or broken generator stops the sweep before it starts
        raise PrepareError(f"augmentation.paraphrase_model: paraphrases could not be made with "
                           f"{aug.paraphrase_model!r}: {type(exc).__name__}: {exc}") from exc
    print(f"paraphrase: {len(rows)} training rows, {generated} generated now, the rest from {cache.path}",
          file=sys.stderr, flush=True)
    return dataclasses.replace(data, paraphrased=rows, paraphrase_source=paraphrase.describe(aug, cache))


def register(store: Store, sweep_id: int, trial: PlannedTrial, data: TrialData) -> tuple[int, bool]:
    key = content_key(trial.config, data, model_identity(trial.config.model.name))
    return store.register_trial(sweep_id, trial.name, trial.kind, trial.params, dataclasses.asdict(trial.config),
                                key, trial.study_trial, trial.baseline)


def trial_dir(sweep_dir: Path, name: str) -> Path:
    """<run_dir>/<sweep>/trials/<name>; names are path-safe by construction, and this makes sure of it."""
    path = (sweep_dir / "trials" / name).resolve()
    if path.parent != (sweep_dir / "trials").resolve():
        raise ValueError(f"trial name {name!r} would write outside {sweep_dir / 'trials'}; names must be path-safe")
    return path


def placement(resources: ResourcesConfig, backend) -> tuple[int, float, int]:
    """(CPUs per trial, GPUs per trial, concurrent trials): one GPU per trial where Ray has GPUs."""
    gpus = resources.gpus_per_trial if backend.total("GPU") > 0 else 0.0
    slots = int(backend.total("CPU") // resources.cpus_per_trial)
    if gpus:
        slots = min(slots, int(backend.total("GPU") // gpus))
    return resources.cpus_per_trial, gpus, max(slots, 1)


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
        self.baselines = [t for t in plan if t.kind == "baseline"]
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
                self._add(with_baseline(proposed, self.baselines))
                continue
            if not self.queue:
                break
            trial = self.queue.popleft()
            problems = self._infeasible(trial.planned)
            if problems:
                self._end(trial, "failed", "infeasible settings, not run: " + "; ".join(p.render() for p in problems))
                continue
            self.backend.submit(trial.trial_id, trial.planned.config, self.shared[_data_key(trial.planned)],
                                trial_dir(self.sweep_dir, trial.planned.name), self.cpus, self.gpus)
        return bool(self.queue) and not self.stopping

    def _infeasible(self, trial: PlannedTrial) -> list:
        """A study proposal checked as every grid point was before the sweep began (spec and token budget)."""
        if trial.study_trial is None:
            return []
        return run_problems(trial.config) or budget_problems([trial.config], [trial.name])

    def _data(self, trial: PlannedTrial) -> TrialData:
        key = _data_key(trial)
        if key not in self.data:  # a study over dataset.* keys: loaded when first proposed
            self.data[key] = _load_data(trial)
            self.shared[key] = self.backend.share(self.data[key])
        return self.data[key]

    def _record_events(self, events: list[tuple[int, ev.Event]]) -> None:
        points: dict[int, list[tuple[str, int, float]]] = {}
        now = time.monotonic()
        for trial_id, event in events:
            trial = self.trials[trial_id]
            trial.last_event_at = now
            match event:
                case ev.Started(worker=worker, node=node) if not trial.started and not trial.done:
                    trial.started, trial.started_at = True, now
                    trial.where = {"node": node} if node else {}
                    self.store.mark_running(trial_id, worker)
                    self.progress.update(running=1)
                case ev.Attempt(resume_step=step):  # before any point of this attempt, which reports them all again
                    self._flush(points)
                    self.store.resume_from(trial_id, step)
                case ev.Phase(name=name):
                    trial.phase = name
                case ev.Environment(environment=environment):
                    self.store.set_environment(trial_id, {**environment, **trial.where})
                case ev.Metric(name=name, step=step, value=value) if not math.isfinite(value):
                    self._kill(trial, "failed", f"diverged at step {step} ({name.split('/')[-1]} {value})")
                case ev.Metric(name=name, step=step, value=value):
                    points.setdefault(trial_id, []).append((name, step, value))
                    self.tensorboard.scalar(trial.planned.name, name, step, value)
                    self._maybe_prune(trial, event)
        self._flush(points)

    def _flush(self, points: dict[int, list[tuple[str, int, float]]]) -> None:
        for trial_id, batch in points.items():
            self.store.add_metrics(trial_id, batch)
        points.clear()

    def _kill(self, trial: _Running, status: str, reason: str) -> None:
        """End a running trial as `status` for `reason` (the first reason wins) by killing its worker."""
        if trial.ending is None and not trial.done:
            trial.ending = (status, reason)
            self.backend.cancel(trial.trial_id)

    def _maybe_prune(self, trial: _Running, event: ev.Metric) -> None:
        number = trial.planned.study_trial
        if self.study is None or number is None or trial.ending or trial.done or not self.study.pruning:
            return
        metric = self.study.settings.objectives[0].metric
        budget = trial.planned.config.training.max_steps  # None for an epoch budget: its trial alone knows it
        final = trial.phase == "evaluate" or (budget is not None and event.step >= budget)
        if event.name != f"eval/{metric}" or final:
            return  # only interim evaluations; the final one is the trial's result
        if self.study.report(number, event.step, event.value):
            self._kill(trial, "pruned", f"pruned by the {self.study.settings.pruner} pruner at step {event.step}: "
                                        f"eval/{metric}={event.value:.4f}")

    def _record_outcome(self, trial: _Running, result) -> None:
        name, running = trial.planned.name, -1 if trial.started else 0
        trial.started, trial.done = False, True
        broken = [k for k, v in (result.result.metrics.items() if result.error is None else ()) if not math.isfinite(v)]
        if broken and trial.ending is None:
            trial.ending = ("failed", f"diverged: final {broken[0]} is {result.result.metrics[broken[0]]}")
        # Pruned or stopped, it may have finished before the kill; failed (diverged, timed out) it may not count.
        if trial.ending is not None and (result.error is not None or trial.ending[0] == "failed"):
            self._end(trial, *trial.ending, result.runtime_s, running)
        elif result.error is not None:
            if self._retry(trial, result):
                trial.done = False
                self.progress.update(running=running)
                return
            self._end(trial, "failed", result.error, result.runtime_s, running)
        else:
            r = result.result
            self.store.complete_trial(trial.trial_id, r.metrics, r.predictions, result.runtime_s, r.timings_s,
                                      r.adapter_dir, r.scoring, {**r.environment, **trial.where} or None)
            self.tensorboard.hparams(name, {"kind": trial.planned.kind, **trial.planned.params}, r.metrics)
            self.outcome.completed.append(name)
            self.outcome.runtimes_s[name] = result.runtime_s
            self.progress.update(done=1, running=running, runtime_s=result.runtime_s)
            self._tell(trial, "completed", r.metrics)

    def _retry(self, trial: _Running, result) -> bool:
        """Out of memory (torch's, or Ray's memory monitor killing the worker), allowed by the spec, not yet
        retried: run again with half the micro batch."""
        smaller = halved_batch(trial.planned.config)
        if trial.retried or smaller is None or not self.spec.resources.retry_out_of_memory \
                or result.failure is not ev.FailureKind.OUT_OF_MEMORY:
            return False
        error = result.error
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
        self._enforce_time_limits(now)
        if now < self._next_poll:
            return
        self._next_poll = now + 2.0
        whole, trial_ids = self.store.stop_requests(self.sweep_id)
        if whole and not self.stopping:
            self._stop_all("stopped by `sweep stop`")
        for trial_id in trial_ids & set(self.trials):
            self._stop_trial(self.trials[trial_id], "stopped by `sweep stop` for this trial")

    def _enforce_time_limits(self, now: float) -> None:
        total, stall = self.spec.resources.trial_timeout_s, self.spec.resources.stall_timeout_s
        for trial in self.trials.values():
            if not trial.started or trial.done or trial.ending is not None:
                continue
            if total is not None and now - trial.started_at > total:
                self._kill(trial, "failed", f"timed out: ran {now - trial.started_at:.0f} s, over "
                                            f"resources.trial_timeout_s={total:g}; its worker was killed")
            elif stall is not None and now - trial.last_event_at > stall:
                self._kill(trial, "failed", f"stalled: no event for {now - trial.last_event_at:.0f} s, over "
                                            f"resources.stall_timeout_s={stall:g}; its worker was killed")

    def _stop_all(self, reason: str) -> None:
        self.stopping = self.outcome.stopped_by = reason
        for trial in list(self.trials.values()):
            self._stop_trial(trial, reason)

    def _stop_trial(self, trial: _Running, reason: str) -> None:
        if trial in self.queue:
            self.queue.remove(trial)
            self._end(trial, "interrupted", reason)
        elif trial.ending is None and self.backend.is_pending(trial.trial_id):
            self._kill(trial, "interrupted", reason)

    def _interrupt_queued(self) -> None:
        while self.queue:
            self._end(self.queue.popleft(), "interrupted", self.stopping or "the driver stopped before it started")

    def _end(self, trial: _Running, status: str, reason: str, runtime_s: float | None = None,
             running: int = 0) -> None:
        """A trial ends without a result here (failed, pruned, interrupted): store, outcome, progress and study
        at once. `running` is -1 when it was counted as running."""
        trial.done = True
        self.store.end_trial(trial.trial_id, status, reason, runtime_s)
        getattr(self.outcome, status).append(trial.planned.name)
        self.progress.update(running=running, **{status: 1})
        self._tell(trial, status, {})


def _notes(data: dict[str, TrialData]) -> dict:
    first = next(iter(data.values()))
    notes = {"eval_examples": len(first.eval), "train_examples": len(first.train),
             "reference_columns": ", ".join(first.reference_columns)}
    if any(first.skipped_rows):
        notes["skipped_rows"] = (f"{first.skipped_rows[0]} train, {first.skipped_rows[1]} eval "
                                 "(empty or missing dialogue or summary)")
    sources = sorted({d.paraphrase_source for d in data.values() if d.paraphrase_source})
    if sources:
        notes["paraphrase"] = "; ".join(sources)
    return notes


def _data_key(trial: PlannedTrial) -> str:
    """One TrialData per dataset, and per paraphrase setting (each holds the paraphrased rows it needs)."""
    aug = trial.config.augmentation
    made_by = (aug.paraphrase, aug.paraphrase_model, aug.paraphrase_prompt, aug.seed) if aug.paraphrase else None
    return repr((trial.config.dataset, made_by))
