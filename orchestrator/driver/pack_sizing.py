"""How many trials one worker's pack holds (resources.trials_per_worker), which queued trials join it, and what
the plan says about packs.

Which trials may share a pack is trainer.packing's (one function of their configs); this module sizes packs
from the setting, the trials that are ready, the workers there are and, for `auto` on GPUs, their free memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from orchestrator.backends.backend import Backend
from orchestrator.driver.lifecycle import Trial
from sweeps.spec import ResourcesConfig
from trainer import packing
from trainer.config import TrialConfig
from trainer.models import model_config
from trainer.packing import PackMemory

AUTO_TRIALS_PER_WORKER = 8
"""`auto`'s ceiling per worker; below it, as many as the free GPU memory holds (memory_limit). A pack that runs
out of memory all the same is split in halves."""
AUTO_STUDY_TRIALS_PER_WORKER = 2
"""Proposals `auto` asks a study for per free worker. A study learns only from trials that have ended: asking
for many at once would make TPE propose them blind (the constant liar only keeps them apart)."""


AUTO_MEMORY_HEADROOM = 0.2
"""Share of a GPU's free memory `auto` leaves unplanned: allocator fragmentation, the CUDA context of the
trial's own process, and the estimate's error (trainer.packing.pack_memory)."""


def memory_limit(free_bytes: int, need: PackMemory, headroom: float = AUTO_MEMORY_HEADROOM) -> int:
    """How many trials of a pack fit in `free_bytes` of one GPU with `headroom` left free (at least 1: a trial
    too big for the device fails alone, and the out-of-memory retry halves its batch)."""
    usable = free_bytes * (1 - headroom) - need.base_bytes
    return max(1, int(usable // max(need.per_trial_bytes, 1)))


def pack_size(setting: int | str, ready: int, free_workers: int, limit: int | None = None,
              on_gpus: bool = False) -> int:
    """Trials in the next pack: `setting` (1, N or `auto`) of `ready` compatible trials (the first included),
    with `free_workers` workers free (this one included). `auto` packs only on GPU workers (`on_gpus`), where
    one base serves N trials and a bigger batch fills the device; on CPU workers packs measured slower than
    isolated trials (README, Packs), so there it is 1. It spreads the ready trials evenly over the free
    workers, so that each gets a pack. At most `limit` (a halved pack, after an out-of-memory error)."""
    if setting == "auto" and not on_gpus:
        return 1
    if setting == "auto":
        size = min(math.ceil(ready / max(free_workers, 1)), AUTO_TRIALS_PER_WORKER)
    else:
        size = int(setting)
    return max(1, min(size, ready, limit or size))


class PackMates:
    """Which queued trials share a trial's worker: compatible ones (trainer.packing), feasible ones, as many as
    its pack may hold (the setting, the free workers, a halved pack's limit, the GPU's free memory)."""

    def __init__(self, resources: ResourcesConfig, backend: Backend, gpus: float):
        self.resources, self.backend, self.gpus = resources, backend, gpus
        self._gpu_fit: dict[str, int] = {}  # model name -> trials one GPU's free memory holds (`auto`)

    def of(self, trial: Trial, queue: Iterable[Trial], free_workers: int,
           feasible: Callable[[Trial], bool]) -> list[Trial]:
        """The queued trials that join `trial`'s pack (the caller takes them off its queue)."""
        if packing.isolated_reason(trial.planned.config) is not None:
            return []
        key = packing.pack_key(trial.planned.config)
        ready = [t for t in queue if packing.isolated_reason(t.planned.config) is None
                 and packing.pack_key(t.planned.config) == key and feasible(t)]
        halved = [t.pack_limit for t in [trial, *ready] if t.pack_limit]  # a halved pack's
        limit = min([*halved, *self._memory_limit(trial.planned.config)], default=None)
        size = pack_size(self.resources.trials_per_worker, 1 + len(ready), free_workers, limit, self.gpus > 0)
        return ready[:size - 1]

    def _memory_limit(self, config: TrialConfig) -> list[int]:
        """`auto` on GPU workers: as many trials as one GPU's free memory holds, with headroom (once per model)."""
        if self.resources.trials_per_worker != "auto" or self.gpus <= 0:
            return []
        name = config.model.name
        if name not in self._gpu_fit:
            need = packing.pack_memory(config, model_config(name))
            self._gpu_fit[name] = memory_limit(self.backend.free_gpu_bytes(self.gpus), need)
        return [self._gpu_fit[name]]


def proposals_to_ask(setting: int | str, free_workers: int, on_gpus: bool = False) -> int:
    """How many proposals to ask a study for at once: as many as the free workers' packs hold."""
    if setting == "auto":
        return AUTO_STUDY_TRIALS_PER_WORKER * max(free_workers, 1) if on_gpus else 1
    return int(setting)


def plan_lines(configs: Iterable[tuple[str, TrialConfig]], setting: int | str) -> list[str]:
    """For `sweep plan`: the groups of trials that may share a worker, and each trial that must run alone, why."""
    if setting == 1:
        return ["packs: none (resources.trials_per_worker: 1, every trial in its own worker)"]
    groups: dict[tuple, list[str]] = {}
    alone = []
    for name, cfg in configs:
        reason = packing.isolated_reason(cfg)
        if reason is None:
            groups.setdefault(packing.pack_key(cfg), []).append(name)
        else:
            alone.append(f"  {name}: alone, {reason}")
    where = " (auto: packs on GPU workers only; on CPU workers every trial runs alone)" if setting == "auto" else ""
    lines = [f"packs (resources.trials_per_worker: {setting}){where}: {len(groups)} group(s) of compatible trials"]
    lines += [f"  may share a worker: {', '.join(names)}" for names in groups.values()]
    return lines + alone
