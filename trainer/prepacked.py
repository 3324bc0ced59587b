"""Evaluation's linear layers on weights oneDNN has laid out once, where that is the same function computed faster.

torch's `linear` in bfloat16 on a CPU hands oneDNN the weight as a plain row-major matrix, and oneDNN repacks it
into its blocked bfloat16 layout on every call. In generation each call is one token per row (batch x hidden
against the whole weight), so that repacking costs as much as the product: on the 2-core AVX512-BF16 EPYC, one
thread, a (8 x 576) @ (576 x 1536) product took 305-345 us against 155-197 us on a weight packed once
(`torch.ops.mkldnn._reorder_linear_weight`, run by `_linear_pointwise`: the pair torch.compile's freezing
pass uses for CPU inference). Both paths run oneDNN's bfloat16 kernels with float32 accumulation, and their
outputs are equal to the last bit (checked for 1, 8, 32, 446 and 1416 rows, with and without a bias, 2-D,
3-D and strided inputs; tests/test_cpu_kernels.py checks a model's logits and greedy tokens).

So within `prepacked_linears()` every bfloat16 `linear` on a CPU that computes bfloat16 natively, outside
autograd, runs on a packed copy of its weight, made at its first call and kept until the block ends: the merged
LoRA layers, the dequantized 4-bit base, the LM head. Nothing else changes. float32 keeps torch's own path:
oneDNN's packed float32 product sums in another order than MKL's (up to 5e-6 relative), and on a CPU without
native bfloat16 (AVX2) oneDNN cannot pack bfloat16 at all.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from trainer.hardware import free_memory_bytes

# oneDNN picks the packed layout for a row count; generation's products are a few rows (one token per prompt).
ROWS_HINT = 8


@dataclass
class _Budget:
    """Inside a `prepacked_linears` block: the bytes the packed copies may still take, and the modules holding one."""

    left_bytes: int
    holders: list = field(default_factory=list)


_budget: ContextVar[_Budget | None] = ContextVar("prepacked_budget", default=None)  # None outside a block


@contextmanager
def prepacked_linears(model, share: float) -> Iterator[int]:
    """Within the block, `model`'s bfloat16 linear layers run on weights packed once (module docstring) where
    that is the same function: its plain `torch.nn.Linear` layers (the LM head), and the layers whose forward
    calls `linear` below (merged LoRA, the dequantized 4-bit base). The packed copies take at most `share` of the
    memory free at the start; beyond it torch's own `linear` runs. Yields that budget in bytes (0: nothing is
    packed: a model off the CPU, or a CPU without native bfloat16)."""
    import torch

    if not (on_cpu(model) and packs_bfloat16()):
        yield 0
        return
    budget = _Budget(int(share * free_memory_bytes()))
    token = _budget.set(budget)
    # A layer whose forward is already replaced (an accelerate hook) keeps it.
    plain = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in vars(m)]
    for module in plain:
        module.forward = types.MethodType(_linear_forward, module)
    try:
        yield budget.left_bytes
    finally:
        _budget.reset(token)
        for module in plain:
            del module.forward  # back to the class's forward
        for module in budget.holders:
            module.__dict__.pop("_prepacked", None)  # the packed copies go with the block


def linear(module, x, weight, bias=None):
    """`torch.nn.functional.linear(x, weight, bias)`: inside a `prepacked_linears` block, where packing is the same
    function and the budget allows, on `weight` packed once and kept on `module` until the block ends."""
    import torch

    budget = _budget.get()
    if budget is None or not same_function_packed(x, weight, bias):
        return torch.nn.functional.linear(x, weight, bias)
    held = module.__dict__.get("_prepacked")
    if held is None or held[0] is not weight:
        size_bytes = weight.numel() * weight.element_size()
        if size_bytes > budget.left_bytes:
            return torch.nn.functional.linear(x, weight, bias)
        budget.left_bytes -= size_bytes
        budget.holders.append(module)
        held = module._prepacked = (weight, packed_copy(weight))
    if held[1] is None:  # oneDNN refused this weight: torch's path, for the rest of the block
        return torch.nn.functional.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, held[1], bias, "none", [], "")


def packed_copy(weight):
    """oneDNN's packed copy of a (out x in) bfloat16 weight, or None where oneDNN refuses it (its primitive for
    this shape and CPU cannot be made): an evaluation must not fail for a speed-up."""
    import torch

    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)
    except RuntimeError as error:
        print(f"WARNING: oneDNN could not pack a {tuple(weight.shape)} weight ({str(error)[:120]}); "
              "that layer keeps torch's linear", flush=True)
        return None


def _linear_forward(self, x):
    return linear(self, x, self.weight, self.bias)


def on_cpu(model) -> bool:
    first = next(iter(model.parameters()), None)
    return first is not None and first.device.type == "cpu"


def packs_bfloat16() -> bool:
    """Whether oneDNN on this CPU packs bfloat16 weights (native bfloat16: AVX512-BF16, AMX or AVX-NE-CONVERT)."""
    import torch

    try:  # private ops of torch's oneDNN binding: a build without them packs nothing
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def same_function_packed(x, weight, bias=None) -> bool:
    """Whether the packed product is the same function here: bfloat16 input, weight and bias on the CPU, a 2-D
    contiguous weight, and no gradient to take (the packed product has no backward)."""
    import torch

    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.dtype != torch.bfloat16 or t.device.type != "cpu" for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return weight.dim() == 2 and weight.is_contiguous() and x.dim() >= 2
