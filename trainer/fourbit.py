"""bitsandbytes' 4-bit layers as a trial needs them: one weight layout for training and evaluation, and a
dequantized view of the frozen base for training and evaluation.

Why the layout is pinned. On a CPU with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` repacks its
weight in place at the first call in eval mode without grad (`_convert_weight_packed_for_cpu`) and keeps it
packed. Every later call, training included, then takes `gemv_4bit`: absmax rounded to bfloat16, and no
autograd kernel (torch warns "an autograd kernel was not registered ... silently incorrect behavior"). So one
interim eval changed every later training step, a resumed trial (fresh, unpacked base) diverged from an
uninterrupted one at its first step, and without the `kernels` package (hub-only) the packed path was also
the slow one. With the repacking off, every call runs `gemm_4bit`: dequantize, then a plain linear.

Why the base is dequantized once. `gemm_4bit` dequantizes the whole weight on every call: for generation that
is every new token, for training every forward and every backward. The view below dequantizes each frozen
4-bit weight once, with the very kernel `gemm_4bit` calls, into the dtype it would produce, and runs the same
`linear` (autograd then takes the input's gradient through the same weight that bitsandbytes' `MatMul4Bit`
backward dequantizes): logits, losses and gradients are bit-identical (tests/test_fourbit.py, float32 and
bfloat16), only the repeated work is gone. Measured on the 2-core AVX512-BF16 EPYC, one thread, 4 steps of a
grid_2x2x2 trial: float32 30.1 s -> 27.3 s, bfloat16 17.8 s -> 17.7 s, the same losses to the last bit. It is
used only on CPU, the device that identity was shown on (on CUDA bitsandbytes has kernels of its own, not tried
here: no GPU), and only where the dequantized weights fit in a fraction of the free memory.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

from trainer.hardware import free_memory_bytes
from trainer.prepacked import linear

# The dequantized base may take at most this share of the memory free when training or the eval starts (the
# rest: activations, the KV cache, the 4-bit weights that stay loaded).
DEQUANTIZED_MEMORY_SHARE = 0.5


def four_bit_layers(model) -> list:
    """Every bitsandbytes Linear4bit in `model` (NF4 or FP4), base layers under PEFT's LoRA wrappers included."""
    return [m for m in model.modules() if is_four_bit(m)]


def is_four_bit(module) -> bool:
    """Whether `module` is a bitsandbytes Linear4bit (False where bitsandbytes is absent: nothing is quantized)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    return isinstance(module, Linear4bit)


def keep_training_layout(model) -> int:
    """Turn off the CPU repacking (module docstring) on every 4-bit layer; returns how many layers."""
    layers = four_bit_layers(model)
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def dequantized_weight(layer, dtype):
    """The layer's weight exactly as `gemm_4bit` (bitsandbytes' default kernel) dequantizes it for an input of
    `dtype`: nested absmax restored as it does, then the same `dequantize_4bit` op."""
    import torch

    state = layer.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            state.absmax, state.state2.absmax, state.state2.code, 256, torch.float32) + state.offset
    packed = layer.weight.data.view(-1, 1)
    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, state.blocksize, state.quant_type,
                                                          state.shape, dtype)


def dequantized_bytes(layers: list) -> int:
    """Memory the dequantized view of `layers` takes: every 4-bit weight in its layer's compute dtype."""
    total = 0
    for layer in layers:
        dtype = layer.compute_dtype or layer.weight.quant_state.dtype
        total += layer.weight.quant_state.shape.numel() * dtype.itemsize
    return total


@contextmanager
def dequantized_base(model, share: float = DEQUANTIZED_MEMORY_SHARE) -> Iterator[bool]:
    """Within the block, every 4-bit layer runs `linear` on its weight dequantized once (bit-identical to its
    own forward and backward); yields whether it did. The layers are restored, and the copies freed, on exit.
    Skipped off the CPU, and when the copies would take more than `share` of the free memory. Nested (an
    interim eval inside training), the inner block uses the outer view."""
    layers = four_bit_layers(model)
    if layers and all("_dequantized" in vars(layer) for layer in layers):
        yield True  # already inside a view (training's): it serves the eval too, and its owner restores it
        return
    on_cpu = bool(layers) and all(layer.weight.device.type == "cpu" for layer in layers)
    if not on_cpu or dequantized_bytes(layers) > share * free_memory_bytes():
        yield False
        return
    for layer in layers:
        layer.forward = types.MethodType(_dequantized_forward, layer)
        layer._dequantized = {}
    try:
        yield True
    finally:
        for layer in layers:
            del layer.forward, layer._dequantized  # back to the class's forward


def _dequantized_forward(self, x):
    """Linear4bit.forward without the per-call dequantization: the same casts, the same `linear`."""
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(self)
    if not self.compute_type_is_set:  # a first call (a zero-shot eval) picks the compute dtype as the layer does
        self.set_compute_type(x)
        self.compute_type_is_set = True
    inp_dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    weight = self._dequantized.get(x.dtype)
    if weight is None:
        weight = self._dequantized[x.dtype] = dequantized_weight(self, x.dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return linear(self, x, weight, bias).to(inp_dtype)  # in an evaluation, on a packed copy (trainer.prepacked)
