"""Batched generation (greedy unless told otherwise) with left padding (decoder-only models continue from the right edge;
encoder-decoder models read the padded prompt with its attention mask and decode from scratch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    """Generated tokens up to (not including) the first end-of-sequence token."""


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             add_special_tokens: bool = True, decoding: dict | None = None,
             adapter_names: list[str] | None = None) -> list[Generation]:
    """Completions of `prompts`, in their order, `batch_size` prompts per forward pass: greedy, or as `decoding`
    says (model.generate options: num_beams, no_repeat_ngram_size, ...); the batch is
    halved whenever one runs out of memory. `adapter_names` (one per prompt) mixes a PEFT model's adapters in each
    batch, every prompt through its own adapter (a pack's evaluation). The tokenizer's padding side is left as it was found: a T5/BART
    collator pads its training labels on that side."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens, decoding or {},
                         adapter_names)
    finally:
        tokenizer.padding_side = padding_side


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
              add_special_tokens: bool, decoding: dict, adapter_names: list[str] | None) -> list[Generation]:
    import torch

    # Longest first in tokens, so each batch holds similar lengths (less padding) and OOM shows up at once.
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i], reverse=True)
    stop_ids = _stop_ids(model, tokenizer)
    results: dict[int, Generation] = {}
    start = 0
    while start < len(order):
        batch = order[start:start + batch_size]
        encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens).to(model.device)
        routed = {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in batch]}
        try:
            with torch.inference_mode():
                output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                        **{"do_sample": False, **decoding}, **routed)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2  # rather than the whole trial failing, or being retrained to retry it
            print(f"WARNING: generation ran out of memory; eval batch size halved to {batch_size}", flush=True)
            torch.cuda.empty_cache()
            continue
        # A decoder-only model returns prompt + continuation; an encoder-decoder its decoder start + summary.
        skip = 1 if model.config.is_encoder_decoder else encoded["input_ids"].shape[1]
        for index, row in zip(batch, output[:, skip:].tolist()):
            length = next((k for k, token in enumerate(row) if token in stop_ids), len(row))
            text = tokenizer.decode(row[:length], skip_special_tokens=True).strip()
            results[index] = Generation(text=text, new_tokens=length)
        start += len(batch)
    return [results[i] for i in range(len(prompts))]


def _stop_ids(model, tokenizer) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in ids + [tokenizer.eos_token_id] if i is not None}
