"""The 4-bit base as trials use it, with real bitsandbytes layers on the tiny model, in float32 and bfloat16:
an eval leaves the weights training reads untouched, and the dequantized eval view is bit-identical."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import lora_tiny_model, tiny_batch
from trainer.fourbit import dequantized_base, four_bit_layers

DTYPES = ["float32", "bfloat16"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_eval_leaves_the_4bit_weights_and_the_next_training_step_as_they_were(tiny_model_dir, dtype):
    model = lora_tiny_model(tiny_model_dir, dtype)
    inputs = tiny_batch(tiny_model_dir)
    layers = four_bit_layers(model)
    before = [(layer.weight.data.clone(), layer.weight.quant_state.absmax.clone()) for layer in layers]

    def gradients() -> list[torch.Tensor]:
        model.train()
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    fresh = gradients()
    model.eval()
    with torch.inference_mode():
        model(**inputs)  # bitsandbytes would repack here on an AVX512-BF16 CPU
    assert all(not getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)
    assert all(torch.equal(w, layer.weight.data) and torch.equal(a, layer.weight.quant_state.absmax)
               for (w, a), layer in zip(before, layers))
    assert all(torch.equal(a, b) for a, b in zip(fresh, gradients()))


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_dequantized_eval_view_gives_the_4bit_models_logits_and_generations_bit_for_bit(
        tiny_model_dir, dtype, double_quant):
    model = lora_tiny_model(tiny_model_dir, dtype, double_quant).eval()
    inputs = tiny_batch(tiny_model_dir)
    with torch.inference_mode():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=0)
        with dequantized_base(model) as used:
            view_logits = model(**inputs).logits
            view_tokens = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=0)
        after = model(**inputs).logits
    assert used and logits.dtype == getattr(torch, dtype)
    assert torch.equal(logits, view_logits) and torch.equal(tokens, view_tokens)
    assert torch.equal(logits, after)  # the layers are their own again
    assert all("forward" not in vars(layer) for layer in four_bit_layers(model))


def test_the_dequantized_view_is_skipped_where_it_would_not_fit(tiny_model_dir):
    model = lora_tiny_model(tiny_model_dir, "float32").eval()
    with dequantized_base(model, share=0.0) as used:
        assert not used and all("forward" not in vars(layer) for layer in four_bit_layers(model))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_training_step_on_the_dequantized_base_gives_bitsandbytes_own_loss_and_gradients(tiny_model_dir, dtype):
    """Training runs inside the view (trainer.trial.train): the loss and every LoRA gradient are bitsandbytes'
    own to the last bit, an eval nested inside it keeps it, and leaving it restores the layers."""
    model = lora_tiny_model(tiny_model_dir, dtype)
    inputs = tiny_batch(tiny_model_dir)

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.train()
        model.zero_grad()
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    own_loss, own_grads = step()
    with dequantized_base(model) as used:
        view_loss, view_grads = step()
        with dequantized_base(model) as nested:  # an interim eval inside training
            assert nested
        assert all("forward" in vars(layer) for layer in four_bit_layers(model))  # the outer view still holds
    assert used and torch.equal(own_loss, view_loss)
    assert len(own_grads) > 0 and all(torch.equal(a, b) for a, b in zip(own_grads, view_grads))
    assert all("forward" not in vars(layer) for layer in four_bit_layers(model))
