"""TRL's SFTTrainer with the two parts a sweep's step does not need, measured as its cost.

Everything else (dataset preparation, prompt/completion masks, the collator, the loop) is TRL's own.
Measured on a 2-core AMD EPYC (AVX2 only, no native bf16), SmolLM2-135M NF4 + LoRA r8, 2x223 tokens,
float32, one thread, one micro batch forward+backward (bench/run.py --only step reports it per run):

- TRL casts every trainable weight of a quantized model to bfloat16, whatever the compute dtype
  (sft_trainer.py, "converted to bf16 to follow the recommendations" of QLoRA). On a CPU that emulates
  bf16 this alone made the step 1.6x slower (6.0 s -> 9.8 s). The adapters go back to float32 here,
  as PEFT made them: the LoRA matmuls are tiny next to the base's, and float32 keeps small AdamW updates.
- TRL's loss runs its tiled fused LM-head kernel and computes entropy and top-1 accuracy over the whole
  vocabulary for its logs: 6.6 s against 5.2 s for the model's own cross-entropy on the same labels
  (prompt and padding at -100, so the loss on summary tokens only is the same to 1e-5). A sweep logs
  neither metric.
"""

from __future__ import annotations

import torch
from transformers import Trainer
from trl import SFTTrainer


class SweepSFTTrainer(SFTTrainer):
    """SFTTrainer whose adapters stay float32 and whose loss is the model's own (summary tokens only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        keep_adapters_float32(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False  # no KV cache while training
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def keep_adapters_float32(model) -> int:
    """Cast trainable weights back to float32 (before the optimizer exists); returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
