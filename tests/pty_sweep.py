"""`python -m tests.pty_sweep MODEL_DIR TRAIN EVAL OUT_DIR`: a two-trial sweep on the scripted backend, its
progress on this process's stderr. The progress test runs it inside a pseudo-terminal, as a user's shell would."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.planning.loading import parse_spec
from orchestrator.driver.sweep import run_sweep
from results.store import Store
from tests.conftest import tiny_spec
from tests.scripted import Finish, ScriptedBackend
from trainer import events as ev

STEPS = 8


def script(config) -> list:
    loss = 2.0 if config.prompt == "v1" else 3.0
    steps = [ev.Metric("train/loss", step, loss / step) for step in range(1, STEPS + 1)]
    return [ev.Phase("load"), ev.Phase("train"), ev.Budget(STEPS), *steps, ev.Phase("evaluate"),
            Finish({"rougeL": 0.25, "rouge1": 0.3, "rouge2": 0.1, "rougeLsum": 0.25, "gen_tokens": 7.0})]


def main(model_dir: str, train: str, evals: str, out_dir: str) -> None:
    raw = tiny_spec(Path(model_dir), Path(train), Path(evals), Path(out_dir))
    raw["search"]["baselines"] = False
    raw["training"]["max_steps"] = STEPS
    spec = parse_spec(raw)
    run_sweep(spec, Store(spec.output.store_url()), ScriptedBackend(script, cpus=2, tick_s=0.15), stream=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:5])
