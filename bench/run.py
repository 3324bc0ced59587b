"""Benchmarks, measured side by side in one run; prints a table of ratios against their targets.

  python bench/run.py                 # everything (grid_2x2x2 + optuna_tpe: ~40 min on 2 cores)
  python bench/run.py --only load,generate

- load:     cached safetensors load vs cold GGUF load+dequantize of the embedded model (>= 10x)
- generate: batched vs one-by-one greedy generation throughput, NF4 model as in trials (>= 4x)
- sweep:    sweep wall time vs (sum of trial times / concurrent slots) (<= 1.05), and the
            grid_2x2x2 wall time on this machine (<= 25 min), on a fresh store
- search:   the full grid (grid_2x2x2) vs a pruned TPE study over the same space (optuna_tpe), same
            model, data and steps per trial: compute spent (fine-tune trial-seconds, start to end as the
            driver saw them, pruned trials included) and the best ROUGE-L each found
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.environment import quiet_third_party  # noqa: E402  (after the path is set)

quiet_third_party()


def bench_load(rows: list) -> None:
    from transformers import AutoModelForCausalLM

    from trainer.config import EMBEDDED_MODEL_ALIAS
    from trainer.models import EMBEDDED_GGUF_FILE, embedded_gguf_dir, resolve_model_path

    cached_dir = resolve_model_path(EMBEDDED_MODEL_ALIAS)
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_FILE)
    cold = time.perf_counter() - start
    cached = min(_timed(lambda: AutoModelForCausalLM.from_pretrained(cached_dir)) for _ in range(3))
    rows.append(("model load: GGUF cold / cached safetensors", f"{cold:.2f} s / {cached:.3f} s",
                 cold / cached, ">= 10x", cold / cached >= 10))


def bench_generate(rows: list, examples: int, batch_size: int) -> None:
    import torch

    from evaluation.generate import generate
    from orchestrator.plan import expand
    from orchestrator.spec import load_spec
    from trainer.data import load_trial_data
    from trainer.trial import eval_prompts, load

    torch.set_num_threads(1)  # one trial's share of this machine
    spec = load_spec(str(REPO / "sweeps" / "grid_2x2x2.yaml"))
    cfg = expand(spec)[0].config
    tokenizer, model = load(cfg)
    model.eval()
    data = load_trial_data(cfg.dataset)
    texts = eval_prompts(cfg, tokenizer, data.eval[:examples])
    new_tokens = cfg.generation.max_new_tokens
    one = _timed(lambda: generate(model, tokenizer, texts, new_tokens, 1, add_special_tokens=False))
    batched = _timed(lambda: generate(model, tokenizer, texts, new_tokens, batch_size, add_special_tokens=False))
    rows.append((f"generation, {examples} prompts: batch 1 / batch {batch_size}",
                 f"{examples / one:.2f} / {examples / batched:.2f} prompts/s", one / batched, ">= 4x",
                 one / batched >= 4))


def run_spec(spec_name: str, num_cpus: int | None, baselines: bool = True):
    """(spec, outcome, store, wall seconds) of one sweep on a fresh store in a scratch dir."""
    import dataclasses

    from orchestrator.ray_backend import RayBackend
    from orchestrator.spec import load_spec
    from orchestrator.sweep import run_sweep
    from results.store import Store

    work = Path(tempfile.mkdtemp(prefix="qlora-sweep-bench-"))
    spec = load_spec(str(REPO / "sweeps" / spec_name))
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, run_dir=str(work / "runs"),
                                                                store=f"sqlite:///{work / 'bench.db'}"),
                               search=dataclasses.replace(spec.search, baselines=baselines))
    start = time.perf_counter()
    backend = RayBackend(num_cpus=num_cpus)
    try:
        outcome = run_sweep(spec, Store(spec.output.store_url()), backend, show_progress=True)
    finally:
        backend.shutdown()
    print(f"bench store: {spec.output.store_url()}  (sweep leaderboard {spec.name} --store ...)")
    return spec, outcome, Store(spec.output.store_url()), time.perf_counter() - start


def bench_sweep(rows: list, run) -> None:
    spec, outcome, _, wall = run  # wall includes Ray start-up, data loading and model preparation
    ideal = sum(outcome.runtimes_s.values()) / outcome.slots
    rows.append((f"{spec.name}: wall / (sum of trial times / {outcome.slots} slots)", f"{wall:.0f} s / {ideal:.0f} s",
                 wall / ideal, "<= 1.05", wall / ideal <= 1.05))
    if spec.name == "grid_2x2x2":
        rows.append(("grid_2x2x2 wall time, this machine", f"{wall / 60:.1f} min", wall / 1500, "<= 1.0 (25 min)",
                     wall <= 1500))
    if outcome.failed:
        rows.append((f"{spec.name}: failed trials", ", ".join(outcome.failed), 0.0, "none", False))


def bench_search(rows: list, grid_run, study_spec: str, num_cpus: int | None) -> None:
    study_run = run_spec(study_spec, num_cpus, baselines=False)  # baselines are the same runs in both
    grid, study = (_compute_and_best(run) for run in (grid_run, study_run))
    pruned = len(study_run[1].pruned)
    rows.append((f"trial-seconds: {study_spec} ({study[2]} trials, {pruned} pruned) / grid ({grid[2]})",
                 f"{study[0]:.0f} s / {grid[0]:.0f} s", study[0] / grid[0], "< 1.0", study[0] < grid[0]))
    rows.append((f"best ROUGE-L: {study_spec} ({study[3]}) / grid ({grid[3]})",
                 f"{study[1]:.2f} / {grid[1]:.2f}", study[1] / grid[1], ">= 0.95", study[1] >= 0.95 * grid[1]))


def _compute_and_best(run) -> tuple[float, float, int, str]:
    """(fine-tune trial-seconds, best ROUGE-L x 100, fine-tunes, best trial) of a finished sweep."""
    spec, _, store, _ = run
    trials = [t for t in store.summary(spec.name).trials if t.kind == "trial" and t.started_at and t.finished_at]
    seconds = sum((t.finished_at - t.started_at).total_seconds() for t in trials)
    best = max((t for t in trials if "rougeL" in t.metrics), key=lambda t: t.metrics["rougeL"])
    return seconds, 100 * best.metrics["rougeL"], len(trials), best.name


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="load,generate,sweep,search",
                        help="comma list of load, generate, sweep, search")
    parser.add_argument("--spec", default="grid_2x2x2.yaml", help="spec file in sweeps/ for the sweep bench")
    parser.add_argument("--study-spec", default="optuna_tpe.yaml", help="study spec compared with --spec")
    parser.add_argument("--examples", type=int, default=16, help="prompts in the generation bench")
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the batched generation")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    rows: list = []
    if "load" in parts:
        bench_load(rows)
    if "generate" in parts:
        bench_generate(rows, args.examples, args.batch_size)
    grid_run = run_spec(args.spec, args.num_cpus) if parts & {"sweep", "search"} else None
    if "sweep" in parts:
        bench_sweep(rows, grid_run)
    if "search" in parts:
        bench_search(rows, grid_run, args.study_spec, args.num_cpus)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement'.ljust(width)}  {'values':<32} {'ratio':>8}  {'target':<16} ok")
    for name, values, ratio, target, ok in rows:
        print(f"{name.ljust(width)}  {values:<32} {ratio:>8.2f}  {target:<16} {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
