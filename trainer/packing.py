"""Which trials may share one worker's base model (a pack), and why a trial must run alone.

A pack runs one forward and one backward of the frozen base for all its trials at once (trainer.pack), so its
trials must agree on everything that computation depends on: the model and its files, the quantization and
compute dtype, the sequence length, the micro batch and accumulation, the step budget, gradient checkpointing,
the checkpoint and interim-eval schedule, and the eval rows and decoding. What only a trial's own adapter,
optimizer or rows depend on may differ: `OWN_KEYS`. Every other key must be equal, so a key added later is
shared (safe) until it is listed here.
"""

from __future__ import annotations

import dataclasses

from trainer.config import TrialConfig

OWN_KEYS = frozenset({
    # The trial's own rows: prompt text, system turn and augmentation only change what its rows contain.
    "prompt", "prompt_template", "model.system_prompt",
    "augmentation.speaker_swap", "augmentation.paraphrase", "augmentation.paraphrase_model",
    "augmentation.paraphrase_prompt", "augmentation.seed",
    # The trial's own adapter: each has its own LoraConfig in the one PEFT model.
    "lora.rank", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.use_rslora",
    # The trial's own optimizer, schedule, clipping and RNG (LoRA init, data order).
    "training.learning_rate", "training.lr_scheduler", "training.warmup_steps", "training.warmup_ratio",
    "training.weight_decay", "training.max_grad_norm", "training.optimizer", "training.seed",
    # What the trial keeps on disk after it ends.
    "training.keep_final_checkpoint",
})
"""Dotted TrialConfig keys in which trials of one pack may differ."""


def leaves(cfg: TrialConfig) -> dict[str, object]:
    """Every dotted leaf key of a trial config with its value (lists as tuples, so they compare and hash)."""
    out: dict[str, object] = {}

    def walk(value, prefix: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{prefix}{f.name}.")
        else:
            out[prefix[:-1]] = tuple(value) if isinstance(value, list) else value

    walk(cfg, "")
    return out


def isolated_reason(cfg: TrialConfig) -> str | None:
    """Why this trial cannot share a worker with any other, or None when it may."""
    if cfg.zero_shot:
        return "a zero-shot baseline has no adapter to train"
    if cfg.training.method == "full":
        return "a full fine-tune trains the base itself, which a pack shares"
    if cfg.lora.use_dora:
        return "PEFT routes mixed-adapter batches for plain LoRA only (DoRA refuses `adapter_names`)"
    if cfg.warm_start is not None:
        return "a warm start begins from another trial's checkpoint; packs are formed of fresh trials"
    return None


def pack_key(cfg: TrialConfig) -> tuple:
    """Equal for two trials exactly when they may share a pack (neither has an isolated_reason)."""
    return tuple(sorted((k, v) for k, v in leaves(cfg).items() if k not in OWN_KEYS))


def pack_conflicts(a: TrialConfig, b: TrialConfig) -> list[str]:
    """The shared keys in which `a` and `b` differ (none: they may share a pack), or why either runs alone."""
    reasons = [r for r in (isolated_reason(a), isolated_reason(b)) if r]
    if reasons:
        return reasons
    left, right = leaves(a), leaves(b)
    return [k for k in left if k not in OWN_KEYS and left[k] != right.get(k)]
