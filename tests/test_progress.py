"""Progress line: counts, ETA from finished trial times and parallel slots, one line per change in logs."""

from __future__ import annotations

import io

import pytest

from orchestrator.lifecycle import Lifecycle, Trial
from orchestrator.plan import PlannedTrial
from orchestrator.progress import Progress
from results.states import TrialState as S
from trainer.config import TrialConfig


def _trial(name: str) -> Trial:
    return Trial(hash(name) % 1000, PlannedTrial(name, "trial", {}, TrialConfig()))


def test_eta_and_lines():
    out = io.StringIO()  # not a TTY: one line per change of counts
    progress = Progress(total=5, slots=2, stream=out)
    lifecycle = Lifecycle([progress])  # its counts move with the trials' states
    assert progress.eta_s() is None
    a, b = _trial("a"), _trial("b")
    for trial in (a, b):
        lifecycle.transition(trial, S.SUBMITTED)
        lifecycle.transition(trial, S.RUNNING)
    lifecycle.transition(a, S.COMPLETED, runtime_s=100.0)
    # 4 left, 1 of them half done: (4 - 0.5) x 100 s / 2 slots
    assert progress.eta_s() == pytest.approx(175.0)
    lifecycle.transition(b, S.FAILED, reason="boom")
    before = out.getvalue().splitlines()
    progress.show()  # same counts: no new line
    lines = out.getvalue().splitlines()
    assert lines == before
    # the first change; a running; b running; a completed; b failed (submitting b changed no count shown)
    assert len(lines) == 5 and len(set(line.split("|")[0] for line in lines)) == 5
    assert lines[-1].startswith("[sweep] 1/5 done (0 reused), 0 running, 1 failed")
    assert "ETA 2m30s" in lines[-1]  # 3 left x 100 s / 2
