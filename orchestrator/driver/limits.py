"""A running trial's time limits (resources.trial_timeout_s, resources.stall_timeout_s): which trials are over
one, and why, in words the trial's row keeps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from orchestrator.driver.lifecycle import Trial
from results.states import TrialState
from sweeps.spec import ResourcesConfig


def over_limit(trials: Iterable[Trial], now_s: float, resources: ResourcesConfig) -> Iterator[tuple[Trial, str]]:
    """(trial, reason) for each running trial, not already ending, past a limit at monotonic time `now_s`."""
    total_s, stall_s = resources.trial_timeout_s, resources.stall_timeout_s
    for trial in trials:
        if trial.state is not TrialState.RUNNING or trial.planned_end is not None:
            continue
        if total_s is not None and now_s - trial.started_at > total_s:
            yield trial, (f"timed out: ran {now_s - trial.started_at:.0f} s, over "
                          f"resources.trial_timeout_s={total_s:g}; its worker was killed")
        elif stall_s is not None and now_s - trial.last_event_at > stall_s:
            yield trial, (f"stalled: no event for {now_s - trial.last_event_at:.0f} s, over "
                          f"resources.stall_timeout_s={stall_s:g}; its worker was killed")
