"""Evaluation on the LoRA adapter merged into its base weight: one `linear` per adapted layer instead of three.

PEFT's LoRA layer runs the base layer, then the adapter's two small matmuls in float32, and adds them: three
calls, two casts and an addition per layer and token. Generation on CPU is bound by those per-call costs (one
token per row at a time), so evaluation spends most of its time there. Within `merged_adapters`, each adapted
layer runs one `linear` on W + scale * B @ A, summed in float32 from the base weight exactly as the layer
dequantizes it, then cast to the dtype the layer computes in. Training never sees it: the layers are restored
on exit. The result is the same function computed in another order: in float32 the logits differ in their last
bits (greedy predictions identical on the tests' models); in bfloat16 the merged weight is rounded once where
the unmerged path rounds the base output and the adapter's, so a prediction may differ (measured: see
docs/guide/precision.md). Merged on CPU only (the device it was measured on), for a model with one adapter
(a pack routes each row through its own), plain LoRA only (DoRA and other variants keep their own forward),
and only where the merged weights fit in the share of free memory that the dequantized base may take.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

from trainer.fourbit import DEQUANTIZED_MEMORY_SHARE, dequantized_weight, is_four_bit
from trainer.hardware import free_memory_bytes
from trainer.prepacked import linear


@contextmanager
def merged_adapters(model, share: float = DEQUANTIZED_MEMORY_SHARE) -> Iterator[int]:
    """Within the block, every plain LoRA layer of `model` runs on its merged weight; yields how many layers.
    Nothing changes (0) where any layer cannot be merged, or the merged weights would not fit `share` of the
    free memory."""
    layers = mergeable_layers(model)
    if not layers or merged_bytes(layers) > share * free_memory_bytes():
        yield 0
        return
    for layer in layers:
        layer._merged_weight = merged_weight(layer)
        layer.forward = types.MethodType(_merged_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward, layer._merged_weight  # back to PEFT's forward


def mergeable_layers(model) -> list:
    """The LoRA layers of a one-adapter PEFT model on CPU, if every one is a plain linear LoRA (else none)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    if len(getattr(model, "peft_config", {})) != 1:
        return []
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return layers if all(_plain(layer) for layer in layers) else []


def _plain(layer) -> bool:
    import torch

    base = layer.get_base_layer()
    adapters = list(layer.active_adapters)
    if len(adapters) != 1 or adapters[0] not in layer.lora_A or not hasattr(layer, "get_delta_weight"):
        return False
    a, b = layer.lora_A[adapters[0]], layer.lora_B[adapters[0]]
    return (not getattr(layer, "lora_variant", {}) and not layer.merged and not layer.disable_adapters
            and isinstance(a, torch.nn.Linear) and b.bias is None
            and _base_dtype(base) is not None and base.weight.device.type == "cpu")


def _base_dtype(base):
    """The dtype the base layer computes in: a 4-bit layer's compute dtype, a linear layer's weight dtype."""
    import torch

    if is_four_bit(base):
        return base.compute_dtype or torch.float32
    return base.weight.dtype if isinstance(base, torch.nn.Linear) else None


def merged_bytes(layers: list) -> int:
    """Memory the merged weights take: one out x in weight per layer in its compute dtype."""
    total = 0
    for layer in layers:
        base = layer.get_base_layer()
        total += base.out_features * base.in_features * _base_dtype(base).itemsize
    return total


def merged_weight(layer):
    """W + scale * B @ A of the active adapter, summed in float32, in the dtype the base layer computes in."""
    import torch

    base = layer.get_base_layer()
    adapter = layer.active_adapters[0]
    with torch.no_grad():
        weight = dequantized_weight(base, torch.float32) if is_four_bit(base) else base.weight.float()
        return (weight + layer.get_delta_weight(adapter).float()).to(_base_dtype(base))


def _merged_forward(self, x, *args, **kwargs):
    """The layer's output on its merged weight, in the input's dtype (as PEFT returns it); a call that routes
    rows through adapters by name (`adapter_names`) takes PEFT's own forward."""
    if kwargs.get("adapter_names") is not None:
        return type(self).forward(self, x, *args, **kwargs)
    weight = self._merged_weight
    bias = self.get_base_layer().bias
    return linear(self, x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype)).to(x.dtype)
