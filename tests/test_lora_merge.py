"""Evaluation on the merged adapter (trainer.lora_merge), with real bitsandbytes NF4 layers and PEFT LoRA on the
tiny model: the same function as PEFT's forward within a measured tolerance, and nothing left behind."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import lora_tiny_model, tiny_batch
from trainer.fourbit import dequantized_base
from trainer.lora_merge import merged_adapters

# Largest difference of the logits, merged against PEFT's forward, over the largest logit (the tiny model with a
# random adapter, B not small: measured 7.7e-2 in bfloat16, where the merged weight is rounded once).
RTOL = {"float32": 1e-5, "bfloat16": 1e-1}


def _logits(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits.float()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_adapters_compute_peft_s_forward_and_leave_it_as_it_was(tiny_model_dir, dtype):
    model = lora_tiny_model(tiny_model_dir, dtype).eval()  # a random adapter (B not zero), on every linear layer
    inputs = tiny_batch(tiny_model_dir)
    with dequantized_base(model):
        expected = _logits(model, inputs)
        with merged_adapters(model) as merged:
            got = _logits(model, inputs)
            with torch.inference_mode():
                routed = model(**inputs, adapter_names=["default", "default"]).logits.float()
        after = _logits(model, inputs)
    assert merged == 14  # 2 layers x 7 projections
    difference = float((got - expected).abs().max() / expected.abs().max())
    print(f"merged / PEFT's forward, {dtype}: largest logit difference {difference:.1e} of the largest logit")
    assert difference <= RTOL[dtype]
    assert not torch.equal(got, expected) or dtype == "float32"  # it did run another path
    assert torch.equal(routed, expected)  # rows routed by adapter name take PEFT's own forward
    assert torch.equal(after, expected)  # restored: PEFT's forward again, bit for bit
    if dtype == "float32":  # greedy choices of the tiny model unchanged
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_a_pack_or_a_dora_adapter_is_left_to_peft(tiny_model_dir):
    from peft import LoraConfig

    model = lora_tiny_model(tiny_model_dir, "float32").eval()
    model.add_adapter("second", LoraConfig(r=4, target_modules="all-linear"))
    with merged_adapters(model) as merged:
        assert merged == 0  # two adapters: a pack routes each row through its own
    dora = lora_tiny_model(tiny_model_dir, "float32", dora=True).eval()
    with merged_adapters(dora) as merged:
        assert merged == 0


def test_no_room_for_the_merged_weights_leaves_peft_s_forward(tiny_model_dir):
    model = lora_tiny_model(tiny_model_dir, "float32").eval()
    with merged_adapters(model, share=0.0) as merged:
        assert merged == 0
        assert "forward" not in vars(model.base_model.model.model.layers[0].self_attn.q_proj)
