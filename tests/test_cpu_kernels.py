"""What a trial runs differently on a CPU for speed, on the tiny model with real bitsandbytes layers: LoRA inputs
left to CPU autocast (same loss and gradients to the last bit), the LM head fed a contiguous input in generation
(same tokens), eager attention in bfloat16 up to 512 tokens (the rule, and the model a trial loads)."""

from __future__ import annotations

import pytest
import torch

from evaluation.generate import generate
from tests.conftest import lora_tiny_model, tiny_batch
from trainer.config import QuantizationConfig
from trainer.hardware import EAGER_ATTENTION_MAX_TOKENS, attention_implementation
from trainer.lora_autocast import follow_cpu_autocast
from trainer.models import load_model, load_tokenizer

PROMPTS = ["#Person1#: Can we meet at ten?\n#Person2#: Yes.", "Hello there, how are you today?",
           "#Person1#: The train is late again.\n#Person2#: Take the bus then."]


def _adapted(tiny_model_dir, dtype: str, hooked: bool):
    model = lora_tiny_model(tiny_model_dir, dtype)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # PEFT's float32 adapters
    if hooked:
        assert follow_cpu_autocast(model) > 0
    return model


def _lora_input_dtypes(model) -> list:
    seen = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda m, args, out: seen.append(args[0].dtype))
    return seen


def test_lora_inputs_left_to_cpu_autocast_give_the_same_loss_and_gradients_to_the_last_bit(tiny_model_dir):
    inputs = tiny_batch(tiny_model_dir)
    results = {}
    for hooked in (False, True):
        model = _adapted(tiny_model_dir, "bfloat16", hooked).train()
        seen = _lora_input_dtypes(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer's accelerator runs a bf16 step
            loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        results[hooked] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad], set(seen))
    (plain_loss, plain_grads, plain_seen), (loss, grads, seen) = results[False], results[True]
    assert plain_seen == {torch.float32} and seen == {torch.bfloat16}  # the round trip is gone
    assert torch.equal(plain_loss, loss) and len(grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, grads))


def test_without_autocast_the_hooked_model_casts_again_and_generates_as_before(tiny_model_dir):
    """An unmerged evaluation (a pack, DoRA, a GPU) runs outside autocast: PEFT's cast must be back on."""
    inputs = tiny_batch(tiny_model_dir)
    tokens = {}
    for hooked in (False, True):
        model = _adapted(tiny_model_dir, "bfloat16", hooked)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**inputs)  # leaves the cast off, were the hook not run before every forward
        seen = _lora_input_dtypes(model)
        with torch.inference_mode():
            tokens[hooked] = model.eval().generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert set(seen) == {torch.float32}
    assert torch.equal(tokens[False], tokens[True])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_feeds_the_lm_head_a_contiguous_input_and_makes_the_same_tokens(tiny_model_dir, dtype):
    model = load_model(str(tiny_model_dir), QuantizationConfig(mode="nf4", compute_dtype=dtype)).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.padding_side = "left"
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.inference_mode():  # plain transformers: the prompts' last positions reach the head as a view
        plain = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    fed = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: fed.append(args[0]))
    made = generate(model, tokenizer, PROMPTS, 8, batch_size=3, add_special_tokens=True)
    handle.remove()
    assert fed and all(x.is_contiguous() for x in fed)
    assert not model.get_output_embeddings()._forward_pre_hooks  # removed after the call
    width = inputs["input_ids"].shape[1]
    expected = [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in plain.tolist()]
    assert [m.text for m in made] == expected


def test_a_cpu_trial_runs_eager_attention_in_bfloat16_up_to_512_tokens_and_sdpa_otherwise(tiny_model_dir):
    assert attention_implementation("cpu", "bfloat16", 224) == "eager"
    assert attention_implementation("cpu", "bfloat16", EAGER_ATTENTION_MAX_TOKENS) == "eager"
    assert attention_implementation("cpu", "bfloat16", EAGER_ATTENTION_MAX_TOKENS + 1) is None
    assert attention_implementation("cpu", "float32", 224) is None
    assert attention_implementation("cuda", "bfloat16", 224) is None
    assert attention_implementation("cpu", "bfloat16", None) is None

    def loaded(dtype: str, length: int | None) -> str:
        quant = QuantizationConfig(mode="nf4", compute_dtype=dtype)
        return load_model(str(tiny_model_dir), quant, length).config._attn_implementation

    assert loaded("bfloat16", 128) == "eager"
    assert loaded("bfloat16", 1024) == loaded("float32", 128) == loaded("bfloat16", None) == "sdpa"
