"""Progress line: counts, ETA from finished trial times and parallel slots, one line per change in logs."""

from __future__ import annotations

import io

import pytest

from orchestrator.progress import Progress


def test_eta_and_lines():
    out = io.StringIO()  # not a TTY: one line per change of counts
    progress = Progress(total=5, slots=2, stream=out)
    assert progress.eta_s() is None
    progress.update(running=2)
    progress.update(done=1, running=-1, runtime_s=100.0)
    # 4 left, 1 of them half done: (4 - 0.5) x 100 s / 2 slots
    assert progress.eta_s() == pytest.approx(175.0)
    progress.update(failed=1, running=-1)
    progress.show()  # same counts: no new line
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("[sweep] 1/5 done (0 reused), 0 running, 1 failed")
    assert "ETA 2m30s" in lines[-1]  # 3 left x 100 s / 2
