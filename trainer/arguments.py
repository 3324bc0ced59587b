"""The Trainer's arguments and budget of one trial, shared by every model family's trainer."""

from __future__ import annotations

from pathlib import Path

from trainer.config import TrialConfig, paged_optimizer_problem

TRAINER_DIR = "trainer"
"""The Trainer's own folder inside a trial's: its checkpoints (trainer.checkpoints) and state."""


def budget(cfg: TrialConfig, train_rows: int) -> int:
    """The trial's optimizer steps over the rows that fit; an epoch budget is checked here, once it is known."""
    total_steps = cfg.training.total_steps(train_rows)
    problems = cfg.training.step_problems("training", total_steps, f" ({train_rows} training rows fit)")
    if problems:
        raise ValueError("; ".join(p.render() for p in problems))
    print(f"training budget: {total_steps} optimizer steps over {train_rows} rows", flush=True)
    return total_steps


# bitsandbytes' optimizers by their transformers names; adamw keeps the Trainer's default (torch's AdamW).
_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
               "paged_adamw_32bit": "paged_adamw_32bit"}


def _optimizer(name: str) -> dict:
    import torch

    problem = None if torch.cuda.is_available() else paged_optimizer_problem("training.optimizer", name,
                                                                            "this worker has no GPU")
    if problem is not None:
        raise ValueError(problem.render())
    return {"optim": _OPTIMIZERS[name]} if name in _OPTIMIZERS else {}


def trainer_args(cfg: TrialConfig, out_dir: Path, total_steps: int) -> dict:
    """TrainingArguments shared by both trainers, for a budget of `total_steps` optimizer steps."""
    import torch

    t = cfg.training
    saving = dict(save_strategy="steps", save_steps=t.checkpoint_interval_steps) if t.checkpoint_interval_steps \
        else dict(save_strategy="no")
    return dict(output_dir=str(out_dir / TRAINER_DIR), max_steps=total_steps, **saving,
                per_device_train_batch_size=t.micro_batch_size, **_optimizer(t.optimizer),
                gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
                lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup(total_steps), seed=t.seed, data_seed=t.seed,
                max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay,
                logging_steps=t.logging_steps, activation_checkpointing=t.gradient_checkpointing,
                bf16=cfg.quantization.compute_dtype == "bfloat16",
                fp16=cfg.quantization.compute_dtype == "float16" and torch.cuda.is_available(),
                use_cpu=not torch.cuda.is_available(), report_to=[], disable_tqdm=True)
