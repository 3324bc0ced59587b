"""Where trials run: whether one fits on the cluster at all, and how many run at once."""

from __future__ import annotations

from orchestrator.backends.backend import Backend
from sweeps.spec import ResourcesConfig
from trainer.config import paged_optimizer_problem


class Unschedulable(Exception):
    """A trial asks for more CPUs or GPUs than any node of the Ray cluster has: it would wait forever."""


def check_placement(resources: ResourcesConfig, backend: Backend, optimizers: set[str] = frozenset()) -> None:
    """Raise Unschedulable when one trial cannot fit on the largest node (Ray would queue it silently), or
    needs a GPU the cluster does not have."""
    problems = []
    if backend.total("GPU") == 0:
        paged = (paged_optimizer_problem("training.optimizer", o, "this Ray cluster has no GPU") for o in sorted(optimizers))
        problems += [p.render() for p in paged if p is not None]
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


def placement(resources: ResourcesConfig, backend: Backend) -> tuple[int, float, int]:
    """(CPUs per trial, GPUs per trial, concurrent trials): one GPU per trial where Ray has GPUs."""
    gpus = resources.gpus_per_trial if backend.total("GPU") > 0 else 0.0
    slots = int(backend.total("CPU") // resources.cpus_per_trial)
    if gpus:
        slots = min(slots, int(backend.total("GPU") // gpus))
    return resources.cpus_per_trial, gpus, max(slots, 1)
