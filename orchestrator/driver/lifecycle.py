"""A trial's lifecycle: its legal moves, and the one `transition` through which every change of state passes.

    PENDING ──submit──> SUBMITTED ──started──> RUNNING ──result──> COMPLETED
       │                    │                     │
       │                    ├──error──────────────┼──> FAILED       raised, diverged, timed out, stalled, died
       │                    │                     ├──> PRUNED       the study's pruner
       │                    └──stop───────────────┴──> INTERRUPTED  a signal, `sweep stop`, the driver aborting
       ├──> REUSED       a completed or pruned row with the same content key: kept, not run
       ├──> FAILED       a study proposal with infeasible settings
       └──> INTERRUPTED  stopped before it was submitted
    SUBMITTED, RUNNING ──out of memory──> PENDING   retried once with half the micro batch
    INTERRUPTED ──`sweep resume`──> PENDING          run again from its checkpoint by the live driver

A move not in `TRANSITIONS` raises IllegalTransition. Each legal one is handed to every registered sink
(orchestrator.trackers.sinks: the store, the Optuna study, TensorBoard, the progress line, the sweep's outcome),
each an object with one method, `on_transition(change)`, in the order they were registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.planning.plan import PlannedTrial
from results.states import TrialState
from trainer.events import Step

_ENDS = {TrialState.COMPLETED, TrialState.FAILED, TrialState.PRUNED, TrialState.INTERRUPTED}
TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    TrialState.PENDING: frozenset({TrialState.SUBMITTED, TrialState.REUSED, TrialState.FAILED, TrialState.INTERRUPTED}),
    # A result, or an error, can arrive before the worker's `started` event was read.
    TrialState.SUBMITTED: frozenset({TrialState.RUNNING, TrialState.PENDING} | _ENDS - {TrialState.PRUNED}),
    TrialState.RUNNING: frozenset({TrialState.PENDING} | _ENDS),
    # `sweep resume` runs a stopped trial again (from its checkpoint) while the driver lives.
    TrialState.INTERRUPTED: frozenset({TrialState.PENDING}),
    **{final: frozenset() for final in _ENDS - {TrialState.INTERRUPTED} | {TrialState.REUSED}},
}


class IllegalTransition(RuntimeError):
    """A trial was asked to move along an edge its lifecycle does not have."""


@dataclass
class Trial:
    """The driver's record of one trial in this run. Its identity is `trial_id` (the store row); `planned.name`
    is its readable label. Only `Lifecycle.transition` changes `state`."""

    trial_id: int
    planned: PlannedTrial
    state: TrialState = TrialState.PENDING
    planned_end: tuple[TrialState, str] | None = None
    """(state, reason) the driver decided when it killed the worker (pruned, interrupted, timed out, diverged);
    applied when the worker's outcome arrives. The first decision wins."""
    attempts: int = 0
    """Out-of-memory retries so far in this run."""
    started_at: float = 0.0
    """time.monotonic() when its worker started it (for resources.trial_timeout_s)."""
    last_event_at: float = 0.0
    """time.monotonic() of its last event (for resources.stall_timeout_s)."""
    where: dict = field(default_factory=dict)
    """The cluster node its worker runs on, added to the environment it reports."""
    phase: Step | None = None
    """The trial step it reported last; the final evaluation comes in Step.EVALUATE."""
    checkpoint_step: int = 0
    """Optimizer step of the last complete checkpoint it reported (0: none yet)."""
    pack: tuple[int, ...] = ()
    """The trial ids sharing its worker's base (itself included) when it runs in a pack (trainer.lockstep)."""
    pack_limit: int | None = None
    """The most trials its next pack may hold: halved after a pack ran out of memory."""

    @property
    def name(self) -> str:
        return self.planned.name


@dataclass(frozen=True)
class Change:
    """One move of one trial, as the sinks see it."""

    trial: Trial
    old: TrialState
    new: TrialState
    reason: str | None = None
    """Why it failed, was pruned or interrupted, or was retried."""
    result: Any = None
    """The TrialResult of a completed trial."""
    runtime_s: float | None = None
    """Seconds inside the trial function, when it ran to an end."""
    worker: str | None = None
    """`host:pid` of the worker that started it (RUNNING)."""
    stored: tuple[TrialState, dict[str, float]] | None = None
    """(stored state, final metrics) of the row a REUSED trial keeps."""


class Sink(Protocol):
    """Everything a trial emits reaches its subscribers here, as Ray Tune's callbacks do: its state changes and its
    events. Optional methods: `on_event(trial, event)` for each event a trial reports (a curve point, an
    environment, a resume point, interim scores), in the order it reported them; `flush()` after each batch of
    events (a sink may buffer them until then); `close()` once, when the run ends."""

    def on_transition(self, change: Change) -> None:
        """React to one legal move (write, tell, count); raise only on a bug."""


class Lifecycle:
    def __init__(self, sinks: list[Sink] = ()):
        self.sinks = list(sinks)

    def transition(self, trial: Trial, new: TrialState, **details: Any) -> Change:
        """Move `trial` to `new`, or raise IllegalTransition; then every sink sees the change once."""
        allowed = TRANSITIONS[trial.state]
        if new not in allowed:
            raise IllegalTransition(
                f"a trial moves only along its lifecycle's edges: from {trial.state.value} to "
                f"{', '.join(sorted(s.value for s in allowed)) or 'nothing (it has ended)'}; "
                f"trial {trial.name} (id {trial.trial_id}) was asked to move to {new.value}")
        change = Change(trial, trial.state, new, **details)
        trial.state = new
        for sink in self.sinks:
            sink.on_transition(change)
        return change

    def report(self, trial: Trial, event: Any) -> None:
        """One event a trial reported, to every sink that takes events (`on_event`, optional)."""
        for sink in self.sinks:
            getattr(sink, "on_event", _ignore)(trial, event)

    def flush(self) -> None:
        """A batch of events is over: sinks that buffer them (`flush()`, optional) write them now."""
        for sink in self.sinks:
            getattr(sink, "flush", _ignore)()

    def close(self) -> None:
        """The run is over: sinks that hold something open (`close()`, optional) release it."""
        for sink in self.sinks:
            getattr(sink, "close", _ignore)()


def _ignore(*args: Any) -> None:
    """A sink's optional method it does not have."""
