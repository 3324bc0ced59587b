"""The states a trial can be in, and the ones the results store records (as the enum's values)."""

from __future__ import annotations

from enum import Enum


class TrialState(str, Enum):
    """One trial's state in a sweep. Every change goes through `orchestrator.driver.lifecycle.Lifecycle.transition`,
    which holds the legal moves; the store keeps `.value` in `sweep_trials.status`."""

    PENDING = "pending"
    """Registered, waiting for a free slot (also after an out-of-memory retry)."""
    SUBMITTED = "submitted"
    """Handed to the backend; its worker has not started it yet. Stored as `pending`."""
    RUNNING = "running"
    """Its worker started it: it trains, evaluates and reports; `sweep status` shows its step."""
    COMPLETED = "completed"
    """Trained, evaluated and stored with its final metrics and predictions."""
    FAILED = "failed"
    """Raised, diverged, timed out, stalled, ran out of disk, its worker died, or infeasible: its error is kept."""
    PRUNED = "pruned"
    """Stopped early by the study's pruner; its curve up to then is kept. Final: a re-run does not run it again."""
    INTERRUPTED = "interrupted"
    """Stopped (a signal, `sweep stop`) or left behind by a driver that died: the next run runs it again."""
    REUSED = "reused"
    """A completed or pruned row with the same content key: kept, not run. Its stored state stays as it was."""

    @property
    def final(self) -> bool:
        """Nothing more happens to it in this run."""
        return self in _FINAL

    @property
    def stored(self) -> str | None:
        """What the store records for it; None when the row keeps what it has (a reused row)."""
        return {TrialState.SUBMITTED: TrialState.PENDING.value, TrialState.REUSED: None}.get(self, self.value)


_FINAL = frozenset({TrialState.COMPLETED, TrialState.FAILED, TrialState.PRUNED, TrialState.INTERRUPTED,
                    TrialState.REUSED})
STORED_STATES = tuple(s.value for s in TrialState if s.stored == s.value)
"""The values `sweep_trials.status` holds, in lifecycle order."""
KEPT_STATES = (TrialState.COMPLETED.value, TrialState.PRUNED.value)
"""Finished for good: a re-run of the same spec reuses these rows. Every other stored state is run again."""
UNFINISHED_STATES = (TrialState.PENDING.value, TrialState.RUNNING.value)
"""What a driver that died may have left: `sweep stop` on a dead driver marks these interrupted."""
