"""The shipped smoke spec through the `sweep` command: embedded SmolLM2, DialogSum mirror, local Ray."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sweep_run_smoke_then_leaderboard(data_root, tmp_path):
    store = f"sqlite:///{tmp_path / 'smoke.db'}"
    env = {**os.environ, "QLORA_SWEEP_DATA_DIR": str(data_root), "QLORA_SWEEP_STORE": store}
    sweep = [sys.executable, "-m", "orchestrator.cli"]
    # cwd is a scratch dir, so runs/ lands there; the spec is found by path.
    run = subprocess.run(sweep + ["run", str(REPO / "sweeps" / "smoke.yaml"), "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6 completed, 0 reused, 0 pruned, 0 failed, 0 interrupted" in run.stdout

    board = subprocess.run(sweep + ["leaderboard", "smoke", "--format", "csv"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    rows = list(csv.DictReader(io.StringIO(board.stdout)))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    assert sum(r["best"] == "yes" for r in rows) == 1
    assert all(0 <= float(r["RL"]) <= 100 and float(r["gen_tok"]) > 0 for r in rows)
    assert {r["trial"] for r in rows if r["kind"] == "baseline"} == {"v1-zero-shot", "v2-zero-shot"}
    assert all(r["RL_95ci"].startswith("[") for r in rows)  # bootstrap interval per row
    # Held-out loss of the references: 4 steps on DialogSum already fit its summaries better than zero-shot.
    loss = {r["trial"]: float(r["eval_loss"]) for r in rows}
    for r in rows:
        if r["kind"] == "trial":
            assert loss[r["trial"]] < loss[f"{r['prompt']}-zero-shot"], loss
    table = subprocess.run(sweep + ["leaderboard", "smoke"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120).stdout
    assert "references max over summary1, summary2, summary3" in table and "tokenizer ascii" in table
    show = subprocess.run(sweep + ["show", "smoke", "v1-r8-lr5e-4", "--examples", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120).stdout
    assert "reference 3:" in show and "worst 1 by rougeL" in show and "train/loss:" in show
    for name in ("v1-r8-lr5e-4", "v2-r16-lr5e-4"):
        assert (tmp_path / "runs" / "smoke" / "trials" / name / "adapter" / "adapter_config.json").exists()
        assert list((tmp_path / "runs" / "smoke" / "tensorboard" / name).glob("events.out.tfevents.*"))
