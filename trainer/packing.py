"""Which trials may share one worker's base model (a pack), and why a trial must run alone.

A pack runs one forward and one backward of the frozen base for all its trials at once (trainer.lockstep), so its
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


@dataclasses.dataclass(frozen=True)
class PackMemory:
    """Device memory a pack needs, in bytes: the base it shares, and what each trial adds to it."""

    base_bytes: int
    per_trial_bytes: int

    def total(self, trials: int) -> int:
        return self.base_bytes + trials * self.per_trial_bytes


ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 34
"""Activations kept for backward per token, layer and hidden unit, in bytes (16-bit, no recomputation): the
usual transformer-block estimate (Korthikanti et al. 2022, 34 s b h per layer), attention scores left out
because SDPA does not keep them."""
ADAPTER_BYTES_PER_PARAM = 16
"""float32 adapter weight, its gradient and AdamW's two moments."""


def pack_memory(cfg: TrialConfig, model_config) -> PackMemory:
    """An upper-side estimate from the model's config (transformers' PretrainedConfig of a decoder-only model)
    and the trial's settings: the NF4 base (half a byte a weight, plus block constants) and 16-bit embeddings;
    per trial its LoRA adapters with their optimizer, its activations at `micro_batch_size` x `max_seq_length`,
    and its float32 logits over the vocabulary."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    inner, vocab = model_config.intermediate_size, model_config.vocab_size
    heads, kv_heads = model_config.num_attention_heads, getattr(model_config, "num_key_value_heads", None)
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    kv = (kv_heads or heads) * head_dim
    # (in, out) of each projection of one block: q, k, v, o, gate, up, down.
    shapes = [(hidden, heads * head_dim), (hidden, kv), (hidden, kv), (heads * head_dim, hidden),
              (hidden, inner), (hidden, inner), (inner, hidden)]
    linear_weights = layers * sum(i * o for i, o in shapes)
    embeddings = vocab * hidden * (1 if getattr(model_config, "tie_word_embeddings", True) else 2)
    base = int(linear_weights * (0.5 + 4 / 64)) + embeddings * 2  # 4-bit + a float32 absmax per 64 weights
    t = cfg.training
    tokens = t.micro_batch_size * t.max_seq_length
    adapters = layers * sum(cfg.lora.rank * (i + o) for i, o in shapes) * ADAPTER_BYTES_PER_PARAM
    activations = tokens * layers * hidden * ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
    logits = tokens * vocab * (2 + 4 + 4)  # 16-bit logits, their float32 copy and its gradient
    return PackMemory(base, adapters + activations + logits)
