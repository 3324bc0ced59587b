"""Live progress of a sweep: done / running / failed, elapsed time and an ETA."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from results.states import TrialState

S = TrialState


class Progress:
    """On a terminal one line redrawn in place; in a log, one line per change of state. A lifecycle sink: its
    counts are the trials' states, moved by each transition."""

    def __init__(self, total: int, slots: int, stream: TextIO = sys.stderr, enabled: bool = True):
        self.total, self.slots, self.stream, self.enabled = total, max(slots, 1), stream, enabled
        self.start = time.monotonic()
        self.states: Counter[TrialState] = Counter()
        """Trials in each state; a trial counts from its first transition (PENDING trials are not shown)."""
        self.runtimes: list[float] = []
        self._last = ""

    def on_transition(self, change) -> None:
        self.states[change.old] -= 1
        self.states[change.new] += 1
        if change.new is S.COMPLETED and change.runtime_s is not None:
            self.runtimes.append(change.runtime_s)
        self.show()

    def eta_s(self) -> float | None:
        """Remaining trials x mean trial time / parallel slots (None until a trial has finished)."""
        if not self.runtimes:
            return None
        remaining = self.total - sum(n for state, n in self.states.items() if state.final)
        running = self.states[S.RUNNING]
        return max(remaining - running / 2, 0) * (sum(self.runtimes) / len(self.runtimes)) / self.slots

    def line(self) -> str:
        eta, n = self.eta_s(), self.states
        ended = "".join(f", {n[state]} {state.value}" for state in (S.PRUNED, S.INTERRUPTED) if n[state])
        return (f"[sweep] {n[S.COMPLETED] + n[S.REUSED]}/{self.total} done ({n[S.REUSED]} reused), "
                f"{n[S.RUNNING]} running, {n[S.FAILED]} failed{ended} | elapsed {_clock(time.monotonic() - self.start)}"
                f" | ETA {_clock(eta) if eta is not None else '?'}")

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        line = self.line()
        if self.stream.isatty():
            self.stream.write("\r" + line.ljust(len(self._last)))
        elif force or line.split("|")[0] != self._last.split("|")[0]:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = line

    def close(self) -> None:
        self.show(force=not self.stream.isatty())
        if self.enabled and self.stream.isatty():
            self.stream.write("\n")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
