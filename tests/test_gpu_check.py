"""The GPU check (bench/gpu_check.py) on CPU with tiny shapes, through the command a GPU box runs: every row
is there and passes, so the check cannot rot before the first GPU runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_row_on_cpu_with_tiny_shapes(tmp_path):
    done = subprocess.run([sys.executable, "bench/run.py", "--only", "gpu", "--tiny"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    table = done.stdout.split("measurement", 1)[1]
    rows = [line for line in table.splitlines()[1:] if line.strip()]
    for label in ("memory, trial 1 of 3", "memory, trial 2 of 3", "memory, trial 3 of 3",
                  "NF4 + LoRA step in bfloat16", "NF4 + LoRA step in float16", "paged_adamw_8bit on CPU: refused",
                  "micro batch 4 out of memory, retried at 2 x 2", "pack of 1, tiny", "pack of 4, tiny",
                  "pack of 8, tiny", "trials_per_worker auto, tiny", "gpu check wall time"):
        [row] = [r for r in rows if r.startswith(label)]
        assert row.rstrip().endswith("yes"), row
