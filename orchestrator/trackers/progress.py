"""Live progress of a sweep: counts, each running trial's phase, step, ETA and loss, and the sweep's ETA.

On a terminal, rich redraws a table in place: the sweep's line, then one row per running trial. In a log
(not a terminal) it prints one line per change of the counts. A lifecycle sink: its counts are the trials'
states, moved by each transition; the driver also hands it each trial's events (`on_event`).

The sweep's ETA comes from step times, so it is known after the first optimizer steps of the first trial:
remaining optimizer steps (running trials' rest, plus the planned budgets of those not started) x seconds
per step, plus each unfinished trial's time outside training (load, evaluate; measured on finished trials,
else on how long the running ones took to reach training), over the parallel slots.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from results.states import TrialState
from trainer import events as ev



@dataclass
class _Running:
    """What the display knows of one running trial."""

    name: str
    started_at: float
    """time.monotonic() when it started running."""
    total_steps: int | None
    phase: str = "load"
    step: int = 0
    loss: float | None = None
    train_from: tuple[float, int] | None = None
    """(time, step) when its live training began: steps replayed from a checkpoint do not count as speed."""
    last_step_at: float = 0.0

    def step_s(self) -> float | None:
        """Seconds per optimizer step of this attempt, once it has taken one."""
        if self.train_from is None or self.step <= self.train_from[1]:
            return None
        return (self.last_step_at - self.train_from[0]) / (self.step - self.train_from[1])

    def steps_left(self) -> int:
        return max((self.total_steps or 0) - self.step, 0)


class Progress:
    def __init__(self, total: int, slots: int, stream: TextIO = sys.stderr, enabled: bool = True):
        self.total, self.slots, self.stream, self.enabled = total, max(slots, 1), stream, enabled
        self.start = time.monotonic()
        self.states: Counter[TrialState] = Counter()
        """Trials in each state; a trial counts from its first transition (PENDING is not shown)."""
        self.expected_steps: dict[int, int] = {}
        """Trial id -> its planned optimizer steps (0 for a zero-shot run), for the trials not started yet."""
        self.default_steps = 0
        """Steps of a trial not planned yet (a study's next proposals)."""
        self.runtimes: list[float] = []
        self._running: dict[int, _Running] = {}
        self._step_times: list[float] = []  # seconds per step of trials that left RUNNING
        self._outside_training: list[float] = []  # seconds outside training of completed trials
        self._last = ""
        self._live = None

    def expect(self, trial_id: int, steps: int | None) -> None:
        """A registered trial will run about `steps` optimizer steps (None: not known before it trains)."""
        self.expected_steps[trial_id] = steps if steps is not None else self.default_steps

    def on_transition(self, change) -> None:
        trial, now = change.trial, time.monotonic()
        for state, delta in ((change.old, -1), (change.new, 1)):
            if state is not TrialState.PENDING:
                self.states[state] += delta
        if change.new is TrialState.RUNNING:
            steps = self.expected_steps.get(trial.trial_id)
            self._running[trial.trial_id] = _Running(trial.name, now, steps or None)
        elif change.old is TrialState.RUNNING:
            self._left(self._running.pop(trial.trial_id), change, now)
        if change.new.final:
            self.expected_steps.pop(trial.trial_id, None)
        self.show()

    def on_event(self, trial, event: ev.Event) -> None:
        line, now = self._running.get(trial.trial_id), time.monotonic()
        if line is None:
            return
        match event:
            case ev.Phase(name=step):
                line.phase = step.value
            case ev.Budget(total_steps=total):  # after any replayed points: live training starts here
                line.total_steps, line.train_from = total, (now, line.step)
            case ev.Metric(name="train/loss", step=step, value=value):
                line.step, line.loss, line.last_step_at = step, value, now

    def _left(self, line: _Running, change, now: float) -> None:
        step_s = line.step_s()
        if step_s is not None:
            self._step_times.append(step_s)
        if change.new is TrialState.COMPLETED and change.runtime_s is not None:
            self.runtimes.append(change.runtime_s)
            trained = (line.last_step_at - line.train_from[0]) if step_s is not None else 0.0
            self._outside_training.append(max(change.runtime_s - trained, 0.0))

    def step_s(self) -> float | None:
        """Seconds per optimizer step: the median over trials that have taken steps (running or not)."""
        measured = self._step_times + [s for s in (r.step_s() for r in self._running.values()) if s is not None]
        return statistics.median(measured) if measured else None

    def eta_s(self) -> float | None:
        """Seconds until the sweep ends; None until a trial has taken optimizer steps (or one has finished)."""
        step_s = self.step_s()
        if step_s is None and not self.runtimes:
            return None
        step_s = step_s or 0.0
        outside = self._outside_s()
        running = sum(r.steps_left() * step_s + max(outside - self._before_training(r), 0.0)
                      for r in self._running.values())
        waiting = [s for tid, s in self.expected_steps.items() if tid not in self._running]
        not_asked = max(self.total - sum(n for s, n in self.states.items() if s.final) - len(self._running)
                        - len(waiting), 0)
        waiting += [self.default_steps] * not_asked
        return (running + sum(steps * step_s + outside for steps in waiting)) / self.slots

    def _outside_s(self) -> float:
        if self._outside_training:
            return statistics.mean(self._outside_training)
        started = [self._before_training(r) for r in self._running.values() if r.train_from is not None]
        return statistics.mean(started) if started else 0.0

    @staticmethod
    def _before_training(r: _Running) -> float:
        return (r.train_from[0] if r.train_from is not None else time.monotonic()) - r.started_at

    def line(self) -> str:
        eta, n = self.eta_s(), self.states
        done, reused = n[TrialState.COMPLETED] + n[TrialState.REUSED], n[TrialState.REUSED]
        ended = "".join(f", {n[state]} {state.value}" for state in (TrialState.PRUNED, TrialState.INTERRUPTED)
                        if n[state])
        return (f"[sweep] {done}/{self.total} done ({reused} reused), {n[TrialState.RUNNING]} running, "
                f"{n[TrialState.FAILED]} failed{ended} | elapsed {_clock(time.monotonic() - self.start)}"
                f" | ETA {_clock(eta) if eta is not None else '?'}")

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(trial, phase, step, ETA, loss) of each running trial, as the terminal shows them."""
        out = []
        for r in self._running.values():
            step_s = r.step_s()
            eta = _clock(r.steps_left() * step_s) if step_s is not None and r.phase == "train" else "?"
            steps = f"{r.step}/{r.total_steps}" if r.total_steps else "-"
            out.append((r.name, r.phase, steps, eta, "-" if r.loss is None else f"{r.loss:.4f}"))
        return out

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        line = self.line()
        if self.stream.isatty():
            self._draw(line)
        elif force or line.split("|")[0] != self._last.split("|")[0]:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last = line

    def _draw(self, line: str) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text

        table = Table("trial", "phase", "step", "ETA", "loss", box=None, padding=(0, 2), show_edge=False)
        for row in self.rows():
            table.add_row(*row)
        view = Group(Text(line), table) if self._running else Text(line)
        if self._live is None:
            self._live = Live(view, console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def close(self) -> None:
        self.show(force=not self.stream.isatty())
        if self._live is not None:
            self._live.stop()
            self._live = None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
