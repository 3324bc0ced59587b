"""Live progress of a sweep: done / running / failed, elapsed time and an ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """On a terminal one line redrawn in place; in a log, one line per change of state."""

    def __init__(self, total: int, slots: int, stream: TextIO = sys.stderr, enabled: bool = True):
        self.total, self.slots, self.stream, self.enabled = total, max(slots, 1), stream, enabled
        self.start = time.monotonic()
        self.done = self.failed = self.running = self.skipped = self.pruned = self.interrupted = 0
        self.runtimes: list[float] = []
        self._last = ""

    def update(self, *, done: int = 0, failed: int = 0, running: int = 0, skipped: int = 0, pruned: int = 0,
               interrupted: int = 0, runtime_s: float | None = None) -> None:
        self.done += done
        self.failed += failed
        self.running += running
        self.skipped += skipped
        self.pruned += pruned
        self.interrupted += interrupted
        if runtime_s is not None:
            self.runtimes.append(runtime_s)
        self.show()

    def eta_s(self) -> float | None:
        """Remaining trials x mean trial time / parallel slots (None until a trial has finished)."""
        if not self.runtimes:
            return None
        remaining = self.total - self.done - self.failed - self.skipped - self.pruned - self.interrupted
        return max(remaining - self.running / 2, 0) * (sum(self.runtimes) / len(self.runtimes)) / self.slots

    def line(self) -> str:
        eta = self.eta_s()
        ended = "".join(f", {n} {label}" for n, label in ((self.pruned, "pruned"), (self.interrupted, "interrupted"))
                        if n)
        return (f"[sweep] {self.done + self.skipped}/{self.total} done ({self.skipped} reused), "
                f"{self.running} running, {self.failed} failed{ended} | elapsed {_clock(time.monotonic() - self.start)}"
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
