"""`sweep status`: each trial's state, training progress, worker and last word, from the store only."""

from __future__ import annotations

import json
from collections import Counter

from results.environment import dtype_notes
from results.states import STORED_STATES
from results.store import SweepSummary
from sweeps.spec import SweepSpec
from results.stored_spec import stored_spec

_NOTE_CHARS = 90


def render(summary: SweepSummary, driver_alive: bool) -> str:
    spec = stored_spec(summary)
    header = ["trial", "kind", "state", "step", "tries", "runtime_s", "worker", "note"]
    rows = [[t.name, t.kind, _state(t.status, driver_alive), _step(t.last_step, _max_steps(spec, t), t.kind),
             str(t.attempts), "-" if t.runtime_s is None else f"{t.runtime_s:.0f}", t.worker or "-",
             _note(t)] for t in summary.trials]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    table = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header] + rows]
    counts = Counter(t.status for t in summary.trials)
    tally = ", ".join(f"{counts[s]} {s}" for s in STORED_STATES if counts[s])
    notes = [f"note: {n}" for n in dtype_notes(summary.trials)]
    return "\n".join([f"sweep {summary.name}: {_driver(summary, driver_alive)}"] + notes + [""] + table
                     + ["", f"{len(summary.trials)} trials: {tally or 'none'}"])


def render_json(summary: SweepSummary, driver_alive: bool) -> str:
    """One object per trial: name, kind, state, step, max_steps, tries, resumed_from_step, worker, note."""
    spec = stored_spec(summary)
    trials = [{"name": t.name, "kind": t.kind, "state": _state(t.status, driver_alive),
               "step": None if t.kind == "baseline" else t.last_step or 0,
               "max_steps": None if t.kind == "baseline" else _max_steps(spec, t), "tries": t.attempts,
               "resumed_from_step": t.resumed_from_step, "worker": t.worker,
               "note": last_line(t.error) if t.error else None} for t in summary.trials]
    return json.dumps({"sweep": summary.name, "driver": summary.driver, "driver_alive": driver_alive,
                       "trials": trials}, indent=2)


def _driver(summary: SweepSummary, alive: bool) -> str:
    if alive:
        return f"running, driver {summary.driver} (last heartbeat {summary.heartbeat_at:%H:%M:%S} UTC)"
    if summary.driver:
        return (f"driver {summary.driver} is gone (last heartbeat {summary.heartbeat_at:%H:%M:%S} UTC); "
                "`sweep run` with the same spec resumes it")
    unfinished = sum(t.status in ("pending", "running", "interrupted", "failed") for t in summary.trials)
    return "not running" + (f"; {unfinished} trial(s) would run again on `sweep run`" if unfinished else "")


def _state(status: str, driver_alive: bool) -> str:
    """`running` without a live driver is a trial its killed driver left behind: say so."""
    return f"{status} (orphaned)" if status in ("running", "pending") and not driver_alive else status


def _step(last: int | None, max_steps: int | None, kind: str) -> str:
    if kind == "baseline":
        return "-"
    return f"{last or 0}/{max_steps}" if max_steps else str(last or 0)


def _max_steps(spec: SweepSpec, t) -> int | None:
    """Its step budget: swept, else the spec's; None under an epoch budget (its trial counts the steps)."""
    return t.params.get("training.max_steps", spec.training.max_steps)


def _note(t) -> str:
    resumed = f"resumed from step {t.resumed_from_step}" if t.resumed_from_step else ""
    if not t.error:
        return resumed
    last = "; ".join(filter(None, [resumed, last_line(t.error)]))
    return last if len(last) <= _NOTE_CHARS else last[:_NOTE_CHARS - 3] + "..."


def last_line(text: str) -> str:
    """The last non-blank line: where a traceback or a stop reason says what happened."""
    return [line.strip() for line in text.strip().splitlines() if line.strip()][-1]
