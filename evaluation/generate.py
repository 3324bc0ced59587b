"""Batched generation (greedy unless told otherwise) with left padding (decoder-only models continue from the right edge;
encoder-decoder models read the padded prompt with its attention mask and decode from scratch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    """Generated tokens up to (not including) the first end-of-sequence token."""


@dataclass(frozen=True)
class Prefill:
    """The prompts of one generate call as a decoder-only model read them: which prompts (indices into the
    list `generate` was given), their left-padded token ids and attention mask (batch x width), and the KV cache
    of every column but the last (the generated tokens cropped off). Left padding puts each row's last prompt
    token in that last column: its logits predict what follows, so a reader runs it with its continuation.
    Whoever takes the cache may consume it."""

    indices: list[int]
    input_ids: object
    attention_mask: object
    cache: object


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             add_special_tokens: bool = True, decoding: dict | None = None,
             adapter_names: list[str] | None = None,
             on_prefill: Callable[[Prefill], None] | None = None) -> list[Generation]:
    """Completions of `prompts`, in their order, `batch_size` prompts per forward pass: greedy, or as `decoding`
    says (model.generate options: num_beams, no_repeat_ngram_size, ...); the batch is
    halved whenever one runs out of memory. `adapter_names` (one per prompt) mixes a PEFT model's adapters in each
    batch, every prompt through its own adapter (a pack's evaluation). The tokenizer's padding side is left as it was found: a T5/BART
    collator pads its training labels on that side. `on_prefill` receives each batch's `Prefill` after it is
    decoded (decoder-only models whose cache can be cropped): the held-out loss reads the prompts from it
    instead of running them again."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens, decoding or {},
                         adapter_names, on_prefill)
    finally:
        tokenizer.padding_side = padding_side


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
              add_special_tokens: bool, decoding: dict, adapter_names: list[str] | None,
              on_prefill: Callable[[Prefill], None] | None) -> list[Generation]:
    import torch

    # Longest first in tokens, so each batch holds similar lengths (less padding) and OOM shows up at once.
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i], reverse=True)
    stop_ids = _stop_ids(model, tokenizer)
    results: dict[int, Generation] = {}
    # An encoder-decoder returns its decoder start + summary, a decoder-only model prompt + continuation (this
    # module is below trainer.families, so it reads the config itself: the one family check outside it).
    seq2seq = model.config.is_encoder_decoder
    # The prompts' KV cache comes back only where someone takes it (it costs memory until the batch is done), and
    # not from a beam search (its cache holds each prompt once per beam, reordered as beams are).
    keep_cache = on_prefill is not None and not seq2seq and decoding.get("num_beams", 1) == 1
    start = 0
    while start < len(order):
        batch = order[start:start + batch_size]
        encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens).to(model.device)
        routed = {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in batch]}
        try:
            with torch.inference_mode(), _contiguous_head_input(model):
                output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                        return_dict_in_generate=keep_cache, **{"do_sample": False, **decoding},
                                        **routed)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2  # rather than the whole trial failing, or being retrained to retry it
            print(f"WARNING: generation ran out of memory; eval batch size halved to {batch_size}", flush=True)
            torch.cuda.empty_cache()
            continue
        sequences = output.sequences if keep_cache else output
        skip = 1 if seq2seq else encoded["input_ids"].shape[1]
        for index, row in zip(batch, sequences[:, skip:].tolist()):
            length = next((k for k, token in enumerate(row) if token in stop_ids), len(row))
            text = tokenizer.decode(row[:length], skip_special_tokens=True).strip()
            results[index] = Generation(text=text, new_tokens=length)
        start += len(batch)
        cache = _cropped(output, skip - 1) if keep_cache and skip > 1 else None
        if cache is not None:
            on_prefill(Prefill(batch, encoded["input_ids"], encoded["attention_mask"], cache))
    return [results[i] for i in range(len(prompts))]


@contextmanager
def _contiguous_head_input(model) -> Iterator[None]:
    """Within the block, the LM head reads a contiguous copy of its input. Generation's first step hands it the
    prompts' last positions as a strided view (batch x 1 x hidden); torch's `linear` folds such a view into no
    single matmul, so it expands the head's weight once per row and runs a batched matmul: a 49k-vocabulary
    head cost 0.9 s per generate call on the 2-core AVX512-BF16 EPYC (one thread, batch 8) against 10 ms
    contiguous. Same logits in bfloat16, bit for bit; in float32 the two kernels sum in another order."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: tuple(a.contiguous() if hasattr(a, "contiguous")
                                                                       else a for a in args))
    try:
        yield
    finally:
        handle.remove()


def _cropped(output, width: int):
    """The generate call's KV cache cut back to its first `width` tokens, or None where this cache cannot be
    cut back exactly: only a cache of plain dynamic layers holds every prompt token (a sliding-window layer keeps
    the last window, a static one its own length)."""
    from transformers.cache_utils import DynamicLayer

    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    if cache is None or not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        return None
    try:
        extra = cache.get_seq_length() - width
        if extra > 0:  # a negative count removes that many tokens (transformers 4.x and 5.x alike)
            cache.crop(-extra)
        return cache if cache.get_seq_length() == width else None
    except (NotImplementedError, ValueError, AttributeError, TypeError):
        return None


def _stop_ids(model, tokenizer) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in ids + [tokenizer.eos_token_id] if i is not None}
