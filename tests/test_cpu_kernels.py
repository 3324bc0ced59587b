"""What a trial runs differently on a CPU for speed, on the tiny model with real bitsandbytes layers: LoRA inputs
left to CPU autocast (same loss and gradients to the last bit), the LM head fed a contiguous input in generation
(same tokens), eager attention in bfloat16 up to 512 tokens (the rule, and the model a trial loads), and
evaluation's bfloat16 weights packed once for oneDNN (same logits and tokens; never under autograd)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from evaluation.generate import generate
from tests.conftest import lora_tiny_model, tiny_batch
from trainer.config import QuantizationConfig
from trainer.fourbit import DEQUANTIZED_MEMORY_SHARE, dequantized_base, four_bit_layers
from trainer.hardware import EAGER_ATTENTION_MAX_TOKENS, attention_implementation
from trainer.lora_autocast import follow_cpu_autocast
from trainer.lora_merge import merged_adapters
from trainer.models import load_model, load_tokenizer
from trainer.prepacked import packs_bfloat16, prepacked_linears

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


def _logits_and_tokens(model, inputs):
    with torch.inference_mode():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0)
    return logits, tokens


def _packed_modules(model) -> list:
    return [m for m in model.modules() if "_prepacked" in vars(m)]


@pytest.mark.skipif(not packs_bfloat16(), reason="this CPU has no native bfloat16: oneDNN packs nothing")
@pytest.mark.parametrize("adapted", [True, False], ids=["merged-lora", "zero-shot-4bit"])
def test_packed_weights_give_the_same_logits_and_tokens_in_bfloat16(tiny_model_dir, adapted):
    """As an evaluation runs: the 4-bit base dequantized, the adapter merged (or none: a zero-shot baseline), then
    every bfloat16 linear (those layers and the LM head) on a packed weight. Bit for bit the same."""
    quant = QuantizationConfig(mode="nf4", compute_dtype="bfloat16")
    model = (lora_tiny_model(tiny_model_dir, "bfloat16") if adapted else load_model(str(tiny_model_dir), quant)).eval()
    inputs = tiny_batch(tiny_model_dir)
    with dequantized_base(model), merged_adapters(model):
        plain = _logits_and_tokens(model, inputs)
        with prepacked_linears(model, DEQUANTIZED_MEMORY_SHARE) as budget_bytes:
            packed = _logits_and_tokens(model, inputs)
            held = _packed_modules(model)
    assert budget_bytes > 0 and model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert len(held) == len(four_bit_layers(model)) + 1  # every adapted (or 4-bit) layer and the head
    assert torch.equal(plain[0], packed[0]) and torch.equal(plain[1], packed[1])
    assert not _packed_modules(model)  # the copies go with the block
    assert not any("forward" in vars(m) for m in model.modules() if type(m) is torch.nn.Linear)


def test_training_inside_the_block_runs_torchs_linear_with_the_same_loss_and_gradients(tiny_model_dir):
    """The packed product has no backward: wherever a gradient flows, torch's own `linear` runs. Only the first
    layer's attention projections read an input that needs none (the embeddings are frozen)."""
    inputs = tiny_batch(tiny_model_dir)
    results = []
    for block in (contextlib.nullcontext, prepacked_linears):
        model = lora_tiny_model(tiny_model_dir, "bfloat16").train()
        with dequantized_base(model), block(model, 0.5) if block is prepacked_linears else block():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**inputs, labels=inputs["input_ids"]).loss
            loss.backward()
            packed = {name for name, m in model.named_modules() if "_prepacked" in vars(m)}
        assert all(".layers.0.self_attn." in name for name in packed), packed
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("case", ["float32", "no-native-bfloat16", "no-memory", "onednn-refuses"])
def test_nothing_is_packed_in_float32_without_native_bfloat16_or_memory_or_where_onednn_refuses(
        tiny_model_dir, monkeypatch, case):
    if case == "onednn-refuses" and not packs_bfloat16():
        pytest.skip("this CPU has no native bfloat16: oneDNN is never asked")
    dtype = "float32" if case == "float32" else "bfloat16"
    model = load_model(str(tiny_model_dir), QuantizationConfig(mode="nf4", compute_dtype=dtype)).eval()
    if case == "no-native-bfloat16":  # an AVX2 CPU: oneDNN cannot pack bfloat16 there
        monkeypatch.setattr("trainer.prepacked.packs_bfloat16", lambda: False)
    if case == "onednn-refuses":  # a shape or CPU oneDNN makes no primitive for: the evaluation goes on
        def refuse(weight, rows):
            raise RuntimeError("could not create a primitive descriptor")

        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    inputs = tiny_batch(tiny_model_dir)
    with dequantized_base(model):
        plain = _logits_and_tokens(model, inputs)
        with prepacked_linears(model, share=0.0 if case == "no-memory" else 0.5):
            same = _logits_and_tokens(model, inputs)
            copies = [vars(m)["_prepacked"][1] for m in _packed_modules(model)]
        # Refused: each layer tried once, then torch's linear; otherwise none tried.
        assert (copies and set(copies) == {None}) if case == "onednn-refuses" else copies == []
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])
