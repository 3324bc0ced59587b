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
  neither metric. The loss here goes one step further than the model's own: it projects onto the
  vocabulary only the positions whose next token is a summary token (`logits_to_keep` as a mask),
  as TRL's kernel meant to, with plain torch ops.
"""

from __future__ import annotations

import sys

import torch
from transformers import Trainer
from trl import SFTTrainer


class SweepSFTTrainer(SFTTrainer):
    """SFTTrainer whose adapters stay float32 and whose loss is plain cross-entropy on summary tokens only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.model, "peft_config"):  # a full fine-tune keeps the dtype it was loaded in
            keep_adapters_float32(self.model)
        self._slices_logits = slices_logits_by_mask(self.accelerator.unwrap_model(self.model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False  # no KV cache while training
        if return_outputs or not self._slices_logits:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        loss, scored = summary_token_losses(model, inputs, inputs.pop("labels"), "sum")
        # As transformers' causal-LM loss: summed over the accumulated batch's tokens when the Trainer counted them.
        counted = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        return loss / torch.as_tensor(num_items_in_batch if counted else scored.sum()).clamp(min=1)


def summary_token_losses(model, inputs: dict, labels, reduction: str = "none", slices: bool = True):
    """Cross-entropy of each token whose label is not -100 (the summary's), predicted from the position before it;
    the LM head runs only at those positions where the model takes a mask (`slices`: `slices_logits_by_mask`).
    The isolated trial (`reduction="sum"`) and a pack (each row's own, "none") compute their loss here.
    Returns (the losses, the boolean mask of scored positions, one shorter than the rows)."""
    targets = labels[:, 1:]  # position p predicts token p + 1
    scored = targets != -100
    if slices:  # a prompt position's logits cost a (vocabulary x hidden) matmul and a softmax each, all masked
        logits = model(**inputs, logits_to_keep=torch.nn.functional.pad(scored, (0, 1))).logits
    else:
        logits = model(**inputs).logits[:, :-1][scored]
    return torch.nn.functional.cross_entropy(logits.float(), targets[scored], reduction=reduction), scored


def summary_tokens(batches: list[dict]) -> int:
    """Summary tokens over one optimizer step's micro batches (labels shifted by one): the Trainer's
    `num_items_in_batch`, which the step's loss is divided by."""
    return int(sum((batch["labels"][..., 1:] != -100).sum() for batch in batches))


def slices_logits_by_mask(model) -> bool:
    """The model's forward takes `logits_to_keep` as a boolean (batch, position) mask (transformers'
    `slice_logits_to_keep`, used by Llama, Qwen, Mistral, Gemma, ...); other models get the plain loss."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")


def keep_adapters_float32(model) -> int:
    """Cast trainable weights back to float32 (before the optimizer exists); returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
