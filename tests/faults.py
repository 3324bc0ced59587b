"""Trial functions that stand in for `trainer.trial:run_trial` in fault-injection tests.

The driver runs them through real Ray workers exactly as it runs real trials
(`RayBackend(trial_fn="tests.faults:...")`), so what is tested is the orchestrator's handling.
"""

from __future__ import annotations

import time

from trainer.events import Metric
from trainer.result import TrialResult  # light: scripted workers never import torch

SCRIPTED_STEP_S = 0.4


def out_of_memory_above_batch_1(cfg, data, out_dir, report, num_threads=None) -> TrialResult:
    """Raise torch's CUDA out-of-memory error at micro batch > 1, else train for real."""
    import torch

    from trainer.trial import run_trial

    if cfg.training.micro_batch_size > 1:
        report(Metric("train/loss", 1, 9.0))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
    return run_trial(cfg, data, out_dir, report, num_threads)


def scripted(cfg, data, out_dir, report, num_threads=None) -> TrialResult:
    """No model: `eval/rougeL` is 0.9 for prompt v1 and 0.1 otherwise, at every interim evaluation."""
    score = 0.9 if cfg.prompt == "v1" else 0.1
    t = cfg.training
    for step in range(1, t.max_steps + 1):
        time.sleep(SCRIPTED_STEP_S)
        report(Metric("train/loss", step, 1.0 / step))
        if t.eval_interval_steps and step % t.eval_interval_steps == 0 and step < t.max_steps:
            report(Metric("eval/rougeL", step, score))
    metrics = {"rouge1": score, "rouge2": score / 2, "rougeL": score, "rougeLsum": score,
               "gen_tokens": 10.0 if cfg.prompt == "v1" else 5.0, "gen_words": 8.0}
    return TrialResult(metrics, [], None, {"train": t.max_steps * SCRIPTED_STEP_S})


def diverges_for_v2(cfg, data, out_dir, report, num_threads=None) -> TrialResult:
    """Prompt v2 reports a NaN loss at step 3, as a trial blowing up would; v1 is `scripted`."""
    if cfg.prompt == "v2":
        for step, loss in ((1, 2.0), (2, 1.5), (3, float("nan"))):
            report(Metric("train/loss", step, loss))
        time.sleep(600)  # it would go on training, wasting the slot: the driver must end it
    return scripted(cfg, data, out_dir, report, num_threads)


def hangs_for_v2(cfg, data, out_dir, report, num_threads=None) -> TrialResult:
    """Prompt v2 deadlocks after its first step: silent, never ending. v1 is `scripted`."""
    if cfg.prompt == "v2":
        report(Metric("train/loss", 1, 2.0))
        time.sleep(3600)
    return scripted(cfg, data, out_dir, report, num_threads)


def endless_for_v2(cfg, data, out_dir, report, num_threads=None) -> TrialResult:
    """Prompt v2 keeps reporting a loss point every 0.2 s and never ends (so only a total limit stops it)."""
    if cfg.prompt == "v2":
        for step in range(1, 100_000):
            report(Metric("train/loss", step, 1.0))
            time.sleep(0.2)
    return scripted(cfg, data, out_dir, report, num_threads)
