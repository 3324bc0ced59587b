"""The sweep driver: plan -> prepare (data, model cache) -> register -> run on workers -> record.

The driver is the only writer of the results store and of TensorBoard events; workers only
report. A trial already completed with the same content key is reused, not re-run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from evaluation import SCORED_REFERENCE_NOTE
from orchestrator.plan import PlannedTrial, content_key, expand
from orchestrator.progress import Progress
from orchestrator.spec import ResourcesConfig, SweepSpec, to_plain
from results.store import Store
from results.tensorboard import TensorBoardSink
from trainer.data import DATA_DIR_ENV, TrialData, load_trial_data, split_source
from trainer.models import resolve_model_path


@dataclass
class SweepOutcome:
    sweep: str
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    slots: int = 1
    """Trials that could run at once on the resources Ray had."""
    runtimes_s: dict[str, float] = field(default_factory=dict)


@dataclass
class _Running:
    trial_id: int
    planned: PlannedTrial
    started: bool = False


class PrepareError(Exception):
    """A model or dataset could not be made ready; raised before Ray starts or the store is written."""


def run_sweep(spec: SweepSpec, store: Store, backend, stream: TextIO = sys.stderr,
              show_progress: bool = True, prepared: tuple[list[PlannedTrial], dict[str, TrialData]] | None = None
              ) -> SweepOutcome:
    start = time.perf_counter()
    plan, data = prepared or prepare(spec)
    sweep_dir = Path(spec.output.run_dir) / spec.name
    sweep_id = store.open_sweep(spec.name, to_plain(spec), str(sweep_dir), _notes(data))
    outcome = SweepOutcome(spec.name)
    todo = register(store, sweep_id, plan, data, outcome)
    cpus, gpus, outcome.slots = placement(spec.resources, backend)
    progress = Progress(len(plan), outcome.slots, stream, show_progress)
    progress.update(skipped=len(outcome.reused))
    shared = {key: backend.share(value) for key, value in data.items()}
    for trial in todo.values():
        backend.submit(trial.trial_id, trial.planned.config, shared[_data_key(trial.planned)],
                       sweep_dir / "trials" / trial.planned.name, cpus, gpus)
    tensorboard = TensorBoardSink(sweep_dir / "tensorboard")
    try:
        while backend.running:
            finished = backend.finished(timeout_s=1.0)
            record_events(store, tensorboard, todo, backend.drain_events(), progress)  # before finals
            for result in finished:
                record_outcome(store, tensorboard, todo[result.key], result, outcome, progress)
            progress.show()
    finally:
        tensorboard.close()
        progress.close()
    outcome.wall_s = time.perf_counter() - start
    return outcome


def prepare(spec: SweepSpec) -> tuple[list[PlannedTrial], dict[str, TrialData]]:
    """The plan, each distinct dataset loaded once and each distinct model converted once."""
    plan = expand(spec)
    for name in {t.config.model.name for t in plan}:
        try:
            resolve_model_path(name)
        except Exception as exc:  # conversion or download: any failure means the sweep cannot start
            raise PrepareError(f"model.name {name!r} could not be prepared: {type(exc).__name__}: {exc}") from exc
    data: dict[str, TrialData] = {}
    for trial in plan:
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
    return data


def register(store: Store, sweep_id: int, plan: list[PlannedTrial], data: dict[str, TrialData],
             outcome: SweepOutcome) -> dict[int, _Running]:
    todo: dict[int, _Running] = {}
    for trial in plan:
        key = content_key(trial.config, data[_data_key(trial)])
        trial_id, done = store.register_trial(sweep_id, trial.name, trial.kind, trial.params,
                                              dataclasses.asdict(trial.config), key)
        if done:
            outcome.reused.append(trial.name)
        else:
            todo[trial_id] = _Running(trial_id, trial)
    return todo


def placement(resources: ResourcesConfig, backend) -> tuple[int, float, int]:
    """(CPUs per trial, GPUs per trial, concurrent trials): one GPU per trial where Ray has GPUs."""
    gpus = resources.gpus_per_trial if backend.total("GPU") > 0 else 0.0
    slots = int(backend.total("CPU") // resources.cpus_per_trial)
    if gpus:
        slots = min(slots, int(backend.total("GPU") // gpus))
    return resources.cpus_per_trial, gpus, max(slots, 1)


def record_events(store: Store, tensorboard: TensorBoardSink, todo: dict[int, _Running],
                  events: list[tuple[int, dict]], progress: Progress) -> None:
    points: dict[int, list[tuple[str, int, float]]] = {}
    for trial_id, event in events:
        trial = todo[trial_id]
        if not trial.started:
            trial.started = True
            store.mark_running(trial_id)
            progress.update(running=1)
        if event["event"] == "metric":
            points.setdefault(trial_id, []).append((event["name"], event["step"], event["value"]))
            tensorboard.scalar(trial.planned.name, event["name"], event["step"], event["value"])
    for trial_id, batch in points.items():
        store.add_metrics(trial_id, batch)


def record_outcome(store: Store, tensorboard: TensorBoardSink, trial: _Running, result,
                   outcome: SweepOutcome, progress: Progress) -> None:
    name = trial.planned.name
    running = -1 if trial.started else 0
    if result.error is not None:
        store.fail_trial(trial.trial_id, result.error, result.runtime_s)
        outcome.failed.append(name)
        progress.update(failed=1, running=running)
        return
    r = result.result
    store.complete_trial(trial.trial_id, r.metrics, r.predictions, result.runtime_s, r.timings_s, r.adapter_dir)
    tensorboard.hparams(name, {"kind": trial.planned.kind, **trial.planned.params}, r.metrics)
    outcome.completed.append(name)
    outcome.runtimes_s[name] = result.runtime_s
    progress.update(done=1, running=running, runtime_s=result.runtime_s)


def _notes(data: dict[str, TrialData]) -> dict:
    first = next(iter(data.values()))
    return {"scoring": f"{SCORED_REFERENCE_NOTE} (column {first.reference_columns[0]}; "
                       f"{len(first.reference_columns)} available, multi-reference scoring not yet used)",
            "eval_examples": len(first.eval), "train_examples": len(first.train)}


def _data_key(trial: PlannedTrial) -> str:
    return repr(trial.config.dataset)
