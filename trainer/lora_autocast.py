"""LoRA layers under CPU autocast: their input is left to autocast, as PEFT leaves it under CUDA autocast.

PEFT keeps the adapter weights in float32 and casts a LoRA layer's input to that dtype unless
`torch.is_autocast_enabled()`, which, asked without a device type, answers for CUDA only. Under the Trainer's
bfloat16 autocast on a CPU the input is therefore cast to float32 and autocast casts it straight back to bfloat16
for the adapter's matmul: two copies per adapted layer in every forward, two more in the backward, for the same
values (bfloat16 -> float32 -> bfloat16 is exact). `follow_cpu_autocast` turns PEFT's cast off while the model
runs under CPU autocast and back on when it does not (an unmerged evaluation without autocast needs it). The
losses and gradients are the same to the last bit (tests/test_cpu_kernels.py); a grid_2x2x2 step, one thread on the 2-core
AVX512-BF16 EPYC: 4.13 s -> 3.98 s.
"""

from __future__ import annotations


def follow_cpu_autocast(model) -> int:
    """Before every forward of `model`'s transformers module (training, evaluation and every generated token all
    call it), PEFT's input cast is set on each LoRA layer to "not under CPU autocast"; returns how many layers."""
    import torch

    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return 0
    # Plain LoRA only: a variant (DoRA) mixes the input with float32 tensors of its own.
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not getattr(m, "lora_variant", None)]
    if not layers:
        return 0
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model

    def set_cast(module, args) -> None:
        cast = not torch.is_autocast_enabled("cpu")
        for layer in layers:
            layer.cast_input_dtype_enabled = cast

    inner.register_forward_pre_hook(set_cast)
    return len(layers)
