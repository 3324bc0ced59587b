"""The GPU check: what works on the first GPU this project meets, in about 8 minutes, with no Ray and no download.

    python bench/run.py --only gpu         # on a GPU box (or: make gpu-check); prints one table
    python bench/run.py --only gpu --tiny  # the same checks on tiny shapes: the suite runs this on CPU

It needs torch, transformers, peft and accelerate, and the project's other dependencies (trl, bitsandbytes,
datasets, rouge-score, ...) installed from wheels. Models are initialised at random from a config (SmolLM2-135M's
and Qwen2.5-1.5B's shapes, or a tiny one) with the embedded model's real tokenizer, and the rows are synthetic
dialogues: nothing is downloaded. Trials run in this process through `trainer.trial.run_trial` and
`trainer.lockstep.run_pack`, exactly as a Ray worker runs them. The rows, in order:

- memory: device memory allocated before and after each of 3 consecutive trials in one process (CUDA's
  allocator; on CPU the bytes of live torch tensors). After each it must be back at the first figure: memory not
  freed between trials is the problem LoRA sweeps most often report with Ray Tune and Optuna.
- bf16 / fp16 step: an NF4 + LoRA trial in bfloat16, and one in float16 (on CUDA the Trainer scales the loss, as
  on pre-Ampere GPUs such as a T4); every logged loss must be finite.
- paged_adamw_8bit: a trial with bitsandbytes' paged optimizer runs (CUDA); on CPU it is refused, with the reason.
- out of memory: a micro batch that does not fit is caught as out of memory (CUDA: a memory cap just above what
  half the batch needs; CPU: the error is injected) and the trial succeeds at half the batch, twice the
  accumulation (orchestrator.driver.retry.halved_batch, the driver's own rule).
- packs: 1, 4 and 8 trials on one base (trainer.lockstep) per model shape: train seconds per trial-step and peak
  memory per trial, each against the isolated trial (the pack of 1).
- auto: `trials_per_worker: auto` sizes a pack from the free memory with 20% headroom
  (orchestrator.driver.pack_sizing.memory_limit of trainer.packing.pack_memory); the estimate per trial must not
  be below the measured one, and the pack it picks must fit.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

SHAPES = {
    "SmolLM2-135M": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
}
TINY_SHAPES = {"tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)}
PACK_SIZES = (1, 4, 8)
MEMORY_TOLERANCE_BYTES = 2**20
"""What "back at the first figure" allows after a trial: 1 MiB (allocator rounding, a cached small tensor)."""

DIALOGUES = [
    ("#Person1#: Can you pick up milk on the way home?\n#Person2#: Sure, do we need bread too?\n#Person1#: Yes.",
     "#Person1# asks #Person2# to buy milk and bread."),
    ("#Person1#: The meeting moved to Friday at ten.\n#Person2#: Thanks, I will tell the team.",
     "#Person1# tells #Person2# the meeting moved to Friday."),
    ("#Person1#: I lost my keys again.\n#Person2#: Check the kitchen drawer.",
     "#Person1# lost the keys; #Person2# suggests the drawer."),
    ("#Person1#: How much is this jacket?\n#Person2#: Forty dollars, on sale today.\n#Person1#: I will take it.",
     "#Person1# buys a jacket on sale for forty dollars."),
]


def run(tiny: bool = False) -> list[tuple]:
    """Every row of the check: (measurement, values, ratio, target, ok)."""
    import torch

    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    rows: list[tuple] = []
    shapes = TINY_SHAPES if tiny else SHAPES
    first = next(iter(shapes))
    model_dirs = {name: build_model(shape, work / name) for name, shape in shapes.items()}
    seq = 64 if tiny else 256
    base = trial_config(model_dirs[first], work, seq_len=seq, micro_batch=2 if tiny else 4)
    memory_rows(rows, base, work, cuda)
    dtype_rows(rows, base, work, cuda)
    optimizer_row(rows, base, work, cuda)
    out_of_memory_row(rows, base, work, cuda)
    for name, model_dir in model_dirs.items():
        cfg = trial_config(model_dir, work, seq_len=seq, micro_batch=2 if tiny else 4)
        measured = pack_rows(rows, name, cfg, work, cuda)
        auto_row(rows, name, cfg, model_dir, measured, cuda)
    return rows


def build_model(shape: dict, out: Path) -> Path:
    """A decoder-only model of `shape`, random weights (seeded), with the embedded SmolLM2 tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from trainer.models import EMBEDDED_GGUF_FILE, embedded_gguf_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_FILE)
    shape = dict(shape)
    config = AutoConfig.for_model(shape.pop("model_type"), vocab_size=len(tokenizer), tie_word_embeddings=True,
                                  max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def trial_config(model_dir: Path, work: Path, seq_len: int, micro_batch: int, **training):
    """A 2-step NF4 + LoRA trial of `model_dir` on the synthetic rows, through the spec's own checks."""
    from orchestrator.planning.loading import parse_spec
    from orchestrator.search.strategies import expand

    rows = [{"id": f"d{i}", "dialogue": d, "summary": s} for i, (d, s) in enumerate(DIALOGUES * 8)]
    train, evals = work / "train.jsonl", work / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]), encoding="utf-8")
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows[16:18]), encoding="utf-8")
    spec = {"name": "gpu-check", "model": {"name": str(model_dir)},
            "dataset": {"name": None, "train_file": str(train), "eval_file": str(evals), "train_examples": 16,
                        "eval_examples": 2, "eval_overlap": "allow"},  # repeated rows: speed, not scores
            "prompts": {"v1": "Summarize:\n{dialogue}"},
            "lora": {"rank": 8, "dropout": 0.0},
            "quantization": {"mode": "nf4", "compute_dtype": "auto"},
            "training": {"max_steps": 2, "micro_batch_size": micro_batch, "gradient_accumulation_steps": 1,
                         "learning_rate": "1e-3", "max_seq_length": seq_len, **training},
            "generation": {"max_new_tokens": 4, "eval_batch_size": 2},
            "search": {"grid": {"prompt": ["v1"]}, "baselines": False},
            "output": {"run_dir": str(work / "runs"), "store": f"sqlite:///{work / 'unused.db'}"}}
    return expand(parse_spec(spec))[0].config


def with_training(cfg, **changes):
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **changes))


def with_dtype(cfg, dtype: str):
    return dataclasses.replace(cfg, quantization=dataclasses.replace(cfg.quantization, compute_dtype=dtype))


def trial(cfg, work: Path, name: str, report=None):
    """(result, train/loss values) of one trial run in this process, as a Ray worker runs it."""
    from trainer.data import load_trial_data
    from trainer.events import Metric
    from trainer.trial import run_trial

    losses: list[float] = []

    def keep(event) -> None:
        if isinstance(event, Metric) and event.name == "train/loss":
            losses.append(event.value)
        if report is not None:
            report(event)

    result = run_trial(cfg, load_trial_data(cfg.dataset), work / "trials" / name, keep, num_threads=None)
    return result, losses


def allocated_bytes(cuda: bool) -> int:
    """CUDA's allocated bytes, or on CPU the bytes of every live torch tensor (parameters included)."""
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated()
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if not obj.is_meta:
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def memory_rows(rows: list, cfg, work: Path, cuda: bool) -> None:
    baseline = allocated_bytes(cuda)
    for index in range(1, 4):
        before = allocated_bytes(cuda)
        trial(with_training(cfg, seed=index), work, f"memory-{index}")
        after = allocated_bytes(cuda)
        rows.append((f"memory, trial {index} of 3 in one process: allocated before / after (MiB; ratio: MiB over "
                     "the first)", f"{before / 2**20:.2f} / {after / 2**20:.2f}", (after - baseline) / 2**20,
                     "after = first before", abs(after - baseline) <= MEMORY_TOLERANCE_BYTES))


def dtype_rows(rows: list, cfg, work: Path, cuda: bool) -> None:
    for dtype, how in (("bfloat16", ""), ("float16", ", loss scaling" if cuda else ", no loss scaling on CPU")):
        _, losses = trial(with_dtype(cfg, dtype), work, f"step-{dtype}")
        finite = bool(losses) and all(math.isfinite(v) for v in losses)
        rows.append((f"NF4 + LoRA step in {dtype}{how}: train/loss", ", ".join(f"{v:.3f}" for v in losses),
                     float(finite), "finite", finite))


def optimizer_row(rows: list, cfg, work: Path, cuda: bool) -> None:
    paged = with_training(cfg, optimizer="paged_adamw_8bit")
    if cuda:
        _, losses = trial(paged, work, "paged")
        ok = bool(losses) and all(math.isfinite(v) for v in losses)
        rows.append(("paged_adamw_8bit: train/loss", ", ".join(f"{v:.3f}" for v in losses), float(ok), "finite", ok))
        return
    try:
        trial(paged, work, "paged")
        refused = ""
    except ValueError as error:
        refused = str(error)
    ok = "paged" in refused and "GPU" in refused
    rows.append(("paged_adamw_8bit on CPU: refused with the reason", refused[:60] or "ran", float(ok),
                 "refused (GPU only)", ok))


def out_of_memory_row(rows: list, cfg, work: Path, cuda: bool) -> None:
    """The batch that does not fit, then the driver's own retry rule: half the batch, twice the accumulation."""
    import torch

    from orchestrator.driver.retry import halved_batch
    from trainer.events import FailureKind, failure_kind

    small = cfg.training.micro_batch_size
    big = with_training(cfg, micro_batch_size=2 * small)
    with memory_cap(cfg, work, cuda, fits_micro_batch=small):
        try:
            trial(big, work, "oom-big")
            kind = None
        except torch.OutOfMemoryError as error:
            kind = failure_kind(error)
        retried = halved_batch(big)
        result, losses = trial(retried, work, "oom-retry") if kind is FailureKind.OUT_OF_MEMORY else (None, [])
    t = retried.training
    ok = kind is FailureKind.OUT_OF_MEMORY and t.micro_batch_size == small and bool(losses)
    rows.append((f"micro batch {2 * small} out of memory, retried at {t.micro_batch_size} x {t.gradient_accumulation_steps}",
                 f"{kind.value if kind else 'no error'}; retry {'ran' if losses else 'did not run'}", float(ok),
                 "caught, retried", ok))


class memory_cap:
    """Within the block a micro batch above `fits_micro_batch` runs out of memory: on CUDA a cap on this process
    just above the peak the smaller batch measured; on CPU an injected error (a CPU has no such cap)."""

    def __init__(self, cfg, work: Path, cuda: bool, fits_micro_batch: int):
        self.cfg, self.work, self.cuda, self.fits = cfg, work, cuda, fits_micro_batch

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            trial(with_training(self.cfg, micro_batch_size=self.fits), self.work, "oom-measure")
            peak, total = torch.cuda.max_memory_allocated(), torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, peak * 1.15 / total))
            return self
        from transformers import PreTrainedModel

        self.forward, fits = PreTrainedModel.__call__, self.fits

        def refuses_big_batches(model, *args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if model.training and ids is not None and ids.shape[0] > fits:
                raise torch.OutOfMemoryError("CPU stand-in: the micro batch does not fit (gpu_check.memory_cap)")
            return self.forward(model, *args, **kwargs)

        PreTrainedModel.__call__ = refuses_big_batches
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
        else:
            from transformers import PreTrainedModel

            PreTrainedModel.__call__ = self.forward
        return False


def pack_rows(rows: list, shape: str, cfg, work: Path, cuda: bool) -> dict[int, float]:
    """Packs of 1, 4, 8 trials; returns the peak bytes per trial of each (CUDA), or {} on CPU."""
    import torch

    from trainer.data import load_trial_data
    from trainer.lockstep import PackTrial, run_pack

    data, per_trial_peak, alone = load_trial_data(cfg.dataset), {}, None
    for size in PACK_SIZES:
        trials = [PackTrial(i, with_training(cfg, seed=i + 1), data, work / "packs" / f"{shape}-{size}-{i}",
                            lambda event: None) for i in range(size)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        results = run_pack(trials)
        failed = [r for r in results.values() if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        step_s = next(iter(results.values())).timings_s["train"] / cfg.training.max_steps / size
        peak = torch.cuda.max_memory_allocated() / size if cuda else float("nan")
        per_trial_peak[size] = peak
        alone = alone or (step_s, peak)
        memory = f", {peak / 2**20:.0f} MiB/trial" if cuda else ""
        rows.append((f"pack of {size}, {shape}: train s per trial-step{', peak memory per trial' if cuda else ''}",
                     f"{step_s:.3f} s{memory}", alone[0] / step_s, "report (vs alone)", True))
    return per_trial_peak if cuda else {}


def auto_row(rows: list, shape: str, cfg, model_dir: Path, measured: dict[int, float], cuda: bool) -> None:
    """What `auto` would pack on this device, and whether its estimate covers what the packs measured."""
    import torch

    from orchestrator.driver.pack_sizing import AUTO_TRIALS_PER_WORKER, memory_limit
    from trainer.hardware import free_memory_bytes
    from trainer.models import model_config
    from trainer.packing import pack_memory

    free = int(torch.cuda.mem_get_info()[0]) if cuda else free_memory_bytes()
    need = pack_memory(cfg, model_config(str(model_dir)))
    size = min(memory_limit(free, need), AUTO_TRIALS_PER_WORKER)
    if measured:
        largest = max(measured)
        covers = need.total(largest) / largest >= measured[largest]
        values = (f"{size} from {free / 2**30:.1f} GiB free; est. {need.total(largest) / largest / 2**20:.0f} vs "
                  f"measured {measured[largest] / 2**20:.0f} MiB/trial at {largest}")
        ok = covers and need.total(size) <= free
    else:
        values = f"{size} from {free / 2**30:.1f} GiB free; est. {need.per_trial_bytes / 2**20:.1f} MiB/trial"
        ok = size >= 1 and need.per_trial_bytes > 0
    rows.append((f"trials_per_worker auto, {shape}: pack size (20% headroom)", values, float(size), "estimate covers",
                 ok))


def main_rows(tiny: bool) -> list[tuple]:
    start = time.perf_counter()
    rows = run(tiny)
    rows.append(("gpu check wall time", f"{time.perf_counter() - start:.0f} s", 1.0, "report", True))
    return rows
