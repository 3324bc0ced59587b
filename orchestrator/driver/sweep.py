"""The sweep driver: register the planned trials, keep `slots` of them running on a Backend, and end each one
in a truthful state through the Lifecycle.

The driver is the only writer of the results store, of the Optuna study and of TensorBoard events; workers
only report. A trial already completed with the same content key is reused, not re-run; anything a killed
driver left pending or running is run again. Every trial ends as completed, failed (its error kept), pruned
or interrupted (with the reason), its partial curves kept. Preparation (orchestrator.planning.prepare),
placement (orchestrator.driver.placement), the retry policy (orchestrator.driver.retry), pack sizes
(orchestrator.driver.pack_sizing), requests and heartbeat (orchestrator.driver.mailbox), time limits
(orchestrator.driver.limits) and the search (orchestrator.search) live in their own modules; this one is the loop.
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

from orchestrator.driver import pack_sizing, steering
from orchestrator.trackers import mlflow_view
from orchestrator.backends.backend import Backend, Outcome
from orchestrator.planning.budget import budget_problems
from orchestrator.driver.control import StopFlag, SweepBusy, driver_alive, driver_id
from orchestrator.driver.limits import over_limit
from orchestrator.driver.mailbox import Mailbox
from orchestrator.driver.lifecycle import Change, Lifecycle, Sink, Trial
from orchestrator.driver.placement import check_placement, placement
from orchestrator.planning.plan import PlannedTrial, run_problems
from orchestrator.planning.prepare import data_key, load_data, prepare, sweep_notes
from orchestrator.trackers.progress import Progress
from orchestrator.driver.retry import retry_config
from orchestrator.search.strategies import Search, search_for
from orchestrator.trackers.sinks import StoreSink, StudySink, TensorBoardView
from sweeps.spec import SweepSpec, to_plain
from results.states import TrialState
from results.store import Store
from trainer import events as ev
from trainer.data import TrialData
from trainer.identity import content_key
from trainer.models import model_identity

POLL_S = 1.0
"""Longest the loop waits for a trial to finish before it reads events and stop requests again."""


@dataclass
class SweepOutcome:
    """What a run of the sweep did, derived from its trials' final states (a lifecycle sink)."""

    sweep: str
    ended: dict[str, TrialState] = field(default_factory=dict)
    """Each trial that ended in this run -> its final state, in the order they ended."""
    stopped_by: str | None = None
    """Why the sweep stopped before its end (a signal, `sweep stop`), else None."""
    wall_s: float = 0.0
    slots: int = 1
    """Trials that could run at once on the resources Ray had."""
    runtimes_s: dict[str, float] = field(default_factory=dict)

    def on_transition(self, change: Change) -> None:
        if change.new.final:
            self.ended[change.trial.name] = change.new
        else:  # resumed: it has not ended (yet) after all
            self.ended.pop(change.trial.name, None)
        if change.new is TrialState.COMPLETED:
            self.runtimes_s[change.trial.name] = change.runtime_s

    def _in(self, state: TrialState) -> list[str]:
        return [name for name, s in self.ended.items() if s is state]

    completed = property(lambda self: self._in(TrialState.COMPLETED))
    failed = property(lambda self: self._in(TrialState.FAILED))
    reused = property(lambda self: self._in(TrialState.REUSED))
    pruned = property(lambda self: self._in(TrialState.PRUNED))
    interrupted = property(lambda self: self._in(TrialState.INTERRUPTED))


def run_sweep(spec: SweepSpec, store: Store, backend: Backend, stream: TextIO = sys.stderr,
              show_progress: bool = True, prepared: tuple[list[PlannedTrial], dict[str, TrialData]] | None = None,
              stop: StopFlag | None = None, sinks: list[Sink] = ()) -> SweepOutcome:
    """Run every trial of `spec` (resuming what a previous run left) until done or stopped. `sinks` see every
    transition after the store, the study, TensorBoard, the progress line and the outcome have."""
    start = time.perf_counter()
    plan, data = prepared or prepare(spec)
    check_placement(spec.resources, backend, {spec.training.optimizer} | {t.config.training.optimizer for t in plan})
    seen = live_driver_check(store, spec.name)
    sweep_dir = Path(spec.output.run_dir).resolve() / spec.name  # absolute: read commands run from anywhere
    me = driver_id()
    sweep_id = store.lease.open_sweep(spec.name, to_plain(spec), str(sweep_dir), sweep_notes(data, spec), me, seen)
    if sweep_id is None:
        raise SweepBusy(f"sweep {spec.name!r} was claimed by another driver just now; nothing was run")
    try:
        sinks = [*sinks, *_tracker_sinks(spec, store, sweep_dir, stream)]
        driver = Driver(spec, store, backend, sweep_id, sweep_dir, data, Progress(0, 1, stream, show_progress), sinks)
        driver.run(plan + steering.added_plan(store.control, sweep_id), stop if stop is not None else StopFlag())
    finally:
        store.lease.release_sweep(sweep_id, me)
    driver.outcome.wall_s = time.perf_counter() - start
    return driver.outcome


def _tracker_sinks(spec: SweepSpec, store: Store, sweep_dir: Path, stream: TextIO) -> list[Sink]:
    """Optional views of the store that follow the lifecycle: MLflow, when a tracking URI is given."""
    uri = mlflow_view.tracking_uri(spec.output.mlflow_tracking_uri)
    if uri is None:
        return []
    missing = mlflow_view.mlflow_missing()
    if missing:  # only $MLFLOW_TRACKING_URI gets here: a spec that names a URI is checked at load
        print(f"warning: ${mlflow_view.ENV_URI} is set, and {missing}; no MLflow view", file=stream, flush=True)
        return []
    return [mlflow_view.MlflowView(uri, spec.name, to_plain(spec), store, sweep_dir, stream)]


def live_driver_check(store: Store, name: str) -> str | None:
    """The recorded driver when it is gone (so it may be replaced); SweepBusy while it lives."""
    driver, heartbeat_at = store.lease.driver_of(name) or (None, None)
    if driver is None:
        return None
    if driver_alive(driver, heartbeat_at):
        raise SweepBusy(f"sweep {name!r} is being run by {driver} (heartbeat {heartbeat_at:%H:%M:%S}"
                        f" UTC); nothing was run. Fix: wait, or `sweep stop {name}` first")
    return driver


def register(store: Store, sweep_id: int, trial: PlannedTrial, data: TrialData) -> tuple[int, bool]:
    key = content_key(trial.config, data, model_identity(trial.config.model.name))
    return store.records.register_trial(sweep_id, trial.name, trial.kind, trial.params,
                                        dataclasses.asdict(trial.config), key, trial.study_trial, trial.baseline)


def trial_dir(sweep_dir: Path, name: str) -> Path:
    """<run_dir>/<sweep>/trials/<name>; names are path-safe by construction, and this makes sure of it."""
    path = (sweep_dir / "trials" / name).resolve()
    if path.parent != (sweep_dir / "trials").resolve():
        raise ValueError(f"trial name {name!r} would write outside {sweep_dir / 'trials'}; names must be path-safe")
    return path


class Driver:
    """Keeps `slots` trials running, records what they report, and moves each through its lifecycle."""

    def __init__(self, spec: SweepSpec, store: Store, backend: Backend, sweep_id: int, sweep_dir: Path,
                 data: dict[str, TrialData], progress: Progress, sinks: list[Sink] = (), poll_s: float = POLL_S):
        self.spec, self.store, self.backend, self.sweep_id, self.sweep_dir = spec, store, backend, sweep_id, sweep_dir
        self.data, self.progress, self.poll_s = data, progress, poll_s
        self.cpus, self.gpus, self.slots = placement(spec.resources, backend)
        self.outcome = SweepOutcome(spec.name, slots=self.slots)
        self.shared = {key: backend.share(value) for key, value in data.items()}
        self.search: Search = search_for(spec)
        self.lifecycle = Lifecycle([StoreSink(store.records), StudySink(self.search, self._kill),
                                    TensorBoardView(sweep_dir / "tensorboard"), progress, self.outcome, *sinks])
        self.trials: dict[int, Trial] = {}
        self.queue: deque[Trial] = deque()
        self.packs = pack_sizing.PackMates(spec.resources, backend, self.gpus)
        self.stopping: str | None = None
        self.mailbox = Mailbox(store, sweep_id)

    def run(self, plan: list[PlannedTrial], stop: StopFlag) -> None:
        self.progress.total, self.progress.slots = len(plan) + self.search.proposals, self.slots
        self.progress.default_steps = self.spec.training.max_steps or 0
        self.search.open(self.store.url)
        for trial in plan:
            self._add(trial)
        try:
            while self._fill() or self.backend.running:
                finished = self.backend.finished(timeout_s=self.poll_s)
                self._record_events(self.backend.drain_events())  # before finals
                for outcome in finished:
                    self._record_outcome(self.trials[outcome.key], outcome)
                self._control(stop)
                self.progress.show()
        except BaseException:  # a second Ctrl-C, or a bug: leave no trial claiming to run
            self.stopping = self.stopping or "the driver aborted"
            for trial in self.trials.values():
                if trial.state in (TrialState.SUBMITTED, TrialState.RUNNING):
                    self.lifecycle.transition(trial, TrialState.INTERRUPTED, reason=self.stopping)
            raise
        finally:
            self._interrupt_queued()
            self.lifecycle.close()  # TensorBoard's files, the progress line's last word, the MLflow parent run

    def _add(self, planned: PlannedTrial) -> None:
        """Register a trial and queue it; one finished with the same content key is reused instead."""
        trial_id, done = register(self.store, self.sweep_id, planned, self._data(planned))
        trial = self.trials[trial_id] = Trial(trial_id, planned)
        self.progress.expect(trial_id, 0 if planned.config.zero_shot else planned.config.training.max_steps)
        if done:
            state, metrics = self.store.records.trial_result(trial_id)
            self.lifecycle.transition(trial, TrialState.REUSED, stored=(TrialState(state), metrics))
        else:
            self.queue.append(trial)

    def _fill(self) -> bool:
        """Start queued (then proposed) trials while workers are free, packed where resources.trials_per_worker
        allows; False when nothing is left to start."""
        while not self.stopping and self.backend.running < self.slots:
            if not self.queue and not self._ask():
                break
            if not self.queue:
                continue
            trial = self.queue.popleft()
            problems = self._infeasible(trial.planned)
            if problems:
                self.lifecycle.transition(trial, TrialState.FAILED, reason="infeasible settings, not run: "
                                          + "; ".join(p.render() for p in problems))
                continue
            mates = self.packs.of(trial, self.queue, self._free_workers(), lambda t: not self._infeasible(t.planned))
            for mate in mates:
                self.queue.remove(mate)
            self._submit([trial, *mates])
        return bool(self.queue) and not self.stopping

    def _ask(self) -> bool:
        """Queue the search's next proposals: as many as a pack holds (Optuna's constant liar keeps them apart)."""
        asked = 0
        for _ in range(pack_sizing.proposals_to_ask(self.spec.resources.trials_per_worker, self._free_workers(),
                                              self.gpus > 0)):
            proposed = self.search.ask()
            if proposed is None:
                break
            self._add(proposed)
            asked += 1
        return asked > 0

    def _free_workers(self) -> int:
        return max(self.slots - self.backend.running, 1)

    def _submit(self, pack: list[Trial]) -> None:
        dirs = [trial_dir(self.sweep_dir, t.name) for t in pack]
        refs = [self.shared[data_key(t.planned)] for t in pack]
        if len(pack) == 1:
            self.backend.submit(pack[0].trial_id, pack[0].planned.config, refs[0], dirs[0], self.cpus, self.gpus)
        else:
            self.backend.submit_pack([t.trial_id for t in pack], [t.planned.config for t in pack], refs, dirs,
                                     self.cpus, self.gpus)
        for t in pack:
            t.pack = tuple(m.trial_id for m in pack) if len(pack) > 1 else ()
            self.lifecycle.transition(t, TrialState.SUBMITTED)

    def _infeasible(self, trial: PlannedTrial) -> list:
        """A study proposal checked as every grid point was before the sweep began (spec and token budget)."""
        if trial.study_trial is None:
            return []
        return run_problems(trial.config) or budget_problems([trial.config], [trial.name])

    def _data(self, trial: PlannedTrial) -> TrialData:
        key = data_key(trial)
        if key not in self.data:  # a study over dataset.* keys: loaded when first proposed
            self.data[key] = load_data(trial)
            self.shared[key] = self.backend.share(self.data[key])
        return self.data[key]

    def _record_events(self, events: list[tuple[int, ev.Event]]) -> None:
        """What the driver itself does with a trial's events (its lifecycle, its kill on divergence); then every
        event goes to the sinks (store, study, TensorBoard, progress, ...), and the batch is flushed."""
        now = time.monotonic()
        for trial_id, event in events:
            trial = self.trials[trial_id]
            trial.last_event_at = now
            match event:
                case ev.Started(worker=worker, node=node) if trial.state is TrialState.SUBMITTED:
                    trial.started_at, trial.where = now, {"node": node} if node else {}
                    self.lifecycle.transition(trial, TrialState.RUNNING, worker=worker)
                case ev.Phase(name=step):
                    trial.phase = step
                case ev.Checkpoint(step=step):
                    trial.checkpoint_step = step
                case ev.Metric(name=name, step=step, value=value) if not math.isfinite(value):
                    self._kill(trial, TrialState.FAILED, f"diverged at step {step} ({name.split('/')[-1]} {value})")
            self.lifecycle.report(trial, event)
        self.lifecycle.flush()

    def _kill(self, trial: Trial, state: TrialState, reason: str) -> None:
        """End a submitted or running trial as `state` for `reason` (the first reason wins) by killing its worker,
        or taking it out of its pack; the state is applied when its outcome arrives."""
        if trial.planned_end is None and trial.state in (TrialState.SUBMITTED, TrialState.RUNNING):
            trial.planned_end = (state, reason)
            self.backend.cancel(trial.trial_id)

    def _record_outcome(self, trial: Trial, outcome: Outcome) -> None:
        metrics = outcome.result.metrics if outcome.error is None else {}
        broken = [k for k, v in metrics.items() if not math.isfinite(v)]
        if broken and trial.planned_end is None:
            trial.planned_end = (TrialState.FAILED, f"diverged: final {broken[0]} is {metrics[broken[0]]}")
        # Pruned or stopped, it may have finished before the kill; failed (diverged, timed out) it may not count.
        if trial.planned_end is not None and (outcome.error is not None or trial.planned_end[0] is TrialState.FAILED):
            state, reason = trial.planned_end
            self.lifecycle.transition(trial, state, reason=reason, runtime_s=outcome.runtime_s)
        elif outcome.error is not None:
            self._retry_or_fail(trial, outcome)
        else:
            self.lifecycle.transition(trial, TrialState.COMPLETED, result=outcome.result, runtime_s=outcome.runtime_s)

    def _retry_or_fail(self, trial: Trial, outcome: Outcome) -> None:
        if outcome.failure is ev.FailureKind.OUT_OF_MEMORY and len(trial.pack) > 1:
            trial.pack_limit = len(trial.pack) // 2  # each half continues from its checkpoints, config unchanged
            self.lifecycle.transition(trial, TrialState.PENDING,
                                      reason=f"out of memory in a pack of {len(trial.pack)}: "
                                             f"runs again in a pack of at most {trial.pack_limit}")
            self.queue.appendleft(trial)
            return
        retry = retry_config(trial.planned.config, trial.attempts, outcome, self.spec.resources)
        if retry is None:
            self.lifecycle.transition(trial, TrialState.FAILED, reason=outcome.error, runtime_s=outcome.runtime_s)
            return
        config, reason = retry
        trial.planned, trial.attempts = dataclasses.replace(trial.planned, config=config), trial.attempts + 1
        self.lifecycle.transition(trial, TrialState.PENDING, reason=reason)
        self.queue.appendleft(trial)

    def _control(self, stop: StopFlag) -> None:
        """Heartbeat, time limits, and act on Ctrl-C / SIGTERM and on what other terminals asked."""
        now_s = time.monotonic()
        self.mailbox.beat(now_s)
        if stop and not self.stopping:
            self._stop_all(f"interrupted by {signal.Signals(stop.signal).name}")
        for trial, reason in over_limit(self.trials.values(), now_s, self.spec.resources):
            self._kill(trial, TrialState.FAILED, reason)
        stops = self.mailbox.stops(now_s)
        if stops is None:
            return
        whole, trial_ids = stops
        if whole and not self.stopping:
            self._stop_all("stopped by `sweep stop`")
        for trial_id in trial_ids & set(self.trials):
            self._stop_trial(self.trials[trial_id], "stopped by `sweep stop` for this trial")
        if not self.stopping:
            self._steer()

    def _steer(self) -> None:
        """Pick up what `sweep clone`, `sweep extend` and `sweep resume` asked for from another terminal."""
        for planned in self.mailbox.added(known=set(self.trials)):
            self.progress.total += 1
            self._add(planned)
        for trial_id in self.mailbox.resumes() & set(self.trials):
            trial = self.trials[trial_id]
            if trial.state is TrialState.INTERRUPTED:
                self.lifecycle.transition(trial, TrialState.PENDING, reason="resumed by `sweep resume`")
                self.queue.append(trial)

    def _stop_all(self, reason: str) -> None:
        self.stopping = self.outcome.stopped_by = reason
        for trial in list(self.trials.values()):
            self._stop_trial(trial, reason)

    def _stop_trial(self, trial: Trial, reason: str) -> None:
        if trial.state is TrialState.PENDING and trial in self.queue:
            self.queue.remove(trial)
            self.lifecycle.transition(trial, TrialState.INTERRUPTED, reason=reason)
        else:
            self._kill(trial, TrialState.INTERRUPTED, reason)

    def _interrupt_queued(self) -> None:
        while self.queue:
            self.lifecycle.transition(self.queue.popleft(), TrialState.INTERRUPTED,
                                      reason=self.stopping or "the driver stopped before it started")
