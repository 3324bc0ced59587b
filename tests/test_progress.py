"""Progress: counts moved by transitions, one line per change in logs, each running trial's phase, step, ETA
and loss, and a sweep ETA from step times (known after the first steps, not after the first trial)."""

from __future__ import annotations

import io

import pytest

from orchestrator.trackers import progress as progress_module
from orchestrator.driver.lifecycle import Lifecycle, Trial
from orchestrator.planning.plan import PlannedTrial
from orchestrator.trackers.progress import Progress
from results.states import TrialState as S
from trainer import events as ev
from trainer.config import TrialConfig


def _trial(trial_id: int, name: str) -> Trial:
    return Trial(trial_id, PlannedTrial(name, "trial", {}, TrialConfig()))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_and_one_line_per_change_in_a_log():
    out = io.StringIO()  # not a TTY: one line per change of counts
    progress = Progress(total=5, slots=2, stream=out)
    lifecycle = Lifecycle([progress])  # its counts move with the trials' states
    assert progress.eta_s() is None
    a, b = _trial(1, "a"), _trial(2, "b")
    for trial in (a, b):
        lifecycle.transition(trial, S.SUBMITTED)
        lifecycle.transition(trial, S.RUNNING)
    lifecycle.transition(a, S.COMPLETED, runtime_s=100.0)
    lifecycle.transition(b, S.FAILED, reason="boom")
    before = out.getvalue().splitlines()
    progress.show()  # same counts: no new line
    lines = out.getvalue().splitlines()
    assert lines == before
    # the first change; a running; b running; a completed; b failed (submitting b changed no count shown)
    assert len(lines) == 5 and len(set(line.split("|")[0] for line in lines)) == 5
    assert lines[-1].startswith("[sweep] 1/5 done (0 reused), 0 running, 1 failed")
    assert "ETA 2m30s" in lines[-1]  # 3 not started x 100 s outside training (no steps measured) / 2 slots


def test_the_eta_is_known_after_the_first_steps_and_each_trial_shows_its_own(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    progress = Progress(total=3, slots=1, stream=io.StringIO())
    lifecycle = Lifecycle([progress])
    a, b, zero_shot = _trial(1, "a"), _trial(2, "b"), _trial(3, "a-zero-shot")
    for trial, steps in ((a, 10), (b, 10), (zero_shot, 0)):
        progress.expect(trial.trial_id, steps)
    lifecycle.transition(a, S.SUBMITTED)
    lifecycle.transition(a, S.RUNNING)
    progress.on_event(a, ev.Phase("train"))
    assert progress.eta_s() is None and progress.rows() == [("a", "train", "0/10", "?", "-")]
    clock.now = 5.0  # 5 s to load and adapt
    progress.on_event(a, ev.Budget(10))
    for clock.now, step, loss in ((7.0, 1, 2.0), (9.0, 2, 1.5)):
        progress.on_event(a, ev.Metric("train/loss", step, loss))
    # 2 s per step. a: 8 steps left = 16 s. b: 10 x 2 s + 5 s outside training. The zero-shot run: 5 s.
    assert progress.step_s() == pytest.approx(2.0)
    assert progress.eta_s() == pytest.approx(16 + 25 + 5)
    assert progress.rows() == [("a", "train", "2/10", "0m16s", "1.5000")]
    clock.now = 30.0
    lifecycle.transition(a, S.COMPLETED, runtime_s=30.0)  # 4 s of it trained: 26 s outside training
    assert progress.rows() == [] and progress.eta_s() == pytest.approx((10 * 2 + 26) + 26)


def test_a_terminal_shows_one_row_per_running_trial(tiny_model_dir, local_data, tmp_path):
    """In a real pseudo-terminal: rich's table of running trials (phase, step/total, ETA, loss) under the
    sweep's line, redrawn in place."""
    import os
    import pty
    import re
    import subprocess
    import sys

    from tests.conftest import REPO

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    child = subprocess.Popen([sys.executable, "-m", "tests.pty_sweep", str(tiny_model_dir), *map(str, local_data),
                              str(tmp_path)], cwd=REPO, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert child.wait(timeout=60) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in raw  # redrawn in place with terminal control sequences, not appended lines
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert re.search(r"trial\s+phase\s+step\s+ETA\s+loss", text)
    assert re.search(r"v1\s+train\s+[1-8]/8\s+\d+m\d\ds\s+\d\.\d{4}", text)  # its own ETA once it took steps
    assert re.search(r"v2\s+train\s+[1-8]/8", text)
    assert re.search(r"\[sweep\] 0/2 done \(0 reused\), 2 running, 0 failed \| elapsed \dm\d\ds \| ETA \dm\d\ds", text)
    assert "[sweep] 2/2 done (0 reused), 0 running, 0 failed" in text
