"""Held-out loss: teacher-forced cross-entropy of the eval rows' reference summaries, summary tokens only.

Each (example, reference) pair is tokenized as training tokenizes a row: the prompt (its dialogue cut so that
prompt + summary fit `max_seq_length`) and the summary, with the end-of-turn tokens of the chat template or the
end-of-sequence token. The loss of one pair is the mean cross-entropy over its summary tokens; an example's
loss is the mean over its references. Lower is better; at zero-shot it is the base model's own fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer import prompts
from trainer.config import TrialConfig
from trainer.sft import slices_logits_by_mask

# Tokens the chat template puts after the summary (end-of-turn and newline), plus slack.
COMPLETION_END_TOKENS = 4


@dataclass(frozen=True)
class Pair:
    """One reference of one example, ready for the model: encoder input and labels for seq2seq models,
    else the whole sequence with the prompt's label positions at -100."""

    example: int
    input_ids: list[int]
    labels: list[int]


def heldout_pairs(cfg: TrialConfig, tokenizer, encoder_decoder: bool, dialogues: list[str],
                  references: list[tuple[str, ...]]) -> list[Pair]:
    """Every (example, reference) pair that fits `max_seq_length`, tokenized once."""
    out = []
    for index, (dialogue, refs) in enumerate(zip(dialogues, references)):
        for summary in refs:
            pair = _pair(cfg, tokenizer, encoder_decoder, index, dialogue, summary)
            if pair is not None:
                out.append(pair)
    return out


def _pair(cfg: TrialConfig, tokenizer, encoder_decoder: bool, index: int, dialogue: str, summary: str) -> Pair | None:
    summary_ids = tokenizer(summary, add_special_tokens=False)["input_ids"]
    budget = cfg.training.max_seq_length - len(summary_ids) - COMPLETION_END_TOKENS
    fitted = prompts.fit_dialogue(cfg, tokenizer, dialogue, cfg.training.max_seq_length if encoder_decoder else budget)
    if fitted is None or budget <= 0:
        return None
    prompt = prompts.prompt_text(cfg, tokenizer, fitted)
    if encoder_decoder:
        return Pair(index, tokenizer(prompt, add_special_tokens=True)["input_ids"], summary_ids + [tokenizer.eos_token_id])
    chat = prompts.uses_chat(cfg, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    if chat:  # the completion as the chat template closes an assistant turn
        whole = tokenizer.apply_chat_template(prompts.messages(cfg, fitted) + [{"role": "assistant", "content": summary}],
                                              tokenize=False)
        completion_ids = tokenizer(whole, add_special_tokens=False)["input_ids"][len(prompt_ids):]
    else:
        completion_ids = tokenizer(" " + summary, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Pair(index, prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids)


def heldout_loss(model, pairs: list[Pair], examples: int, batch_size: int, pad_id: int,
                 adapter_names: list[str] | None = None) -> list[float | None]:
    """Per example: the mean over its references of the mean cross-entropy of their summary tokens (None when
    no reference fitted). The batch is halved whenever one runs out of memory, as generation's is.
    `adapter_names` (one per pair) routes each pair through its own adapter of a PEFT model (a pack)."""
    import torch

    losses: dict[int, list[float]] = {}
    start = 0
    while start < len(pairs):
        batch = pairs[start:start + batch_size]
        try:
            routed = {} if adapter_names is None else {"adapter_names": adapter_names[start:start + len(batch)]}
            scored = _batch_losses(model, batch, pad_id, torch, routed)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            batch_size = len(batch) // 2  # each loss is per sequence, so the batch size does not change it
            print(f"WARNING: the held-out loss ran out of memory; its batch size halved to {batch_size}", flush=True)
            torch.cuda.empty_cache()
            continue
        for pair, loss in zip(batch, scored):
            losses.setdefault(pair.example, []).append(loss)
        start += len(batch)
    return [sum(losses[i]) / len(losses[i]) if i in losses else None for i in range(examples)]


def _batch_losses(model, batch: list[Pair], pad_id: int, torch, routed: dict) -> list[float]:
    def padded(rows: list[list[int]], value: int):
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], device=model.device)

    input_ids = padded([p.input_ids for p in batch], pad_id)
    attention = padded([[1] * len(p.input_ids) for p in batch], 0)
    labels = padded([p.labels for p in batch], -100)
    with torch.inference_mode():
        if model.config.is_encoder_decoder:
            logits, targets = model(input_ids=input_ids, attention_mask=attention, labels=labels, **routed).logits, labels
        elif slices_logits_by_mask(model):  # the vocabulary projection only where a summary token is predicted
            targets = labels[:, 1:]
            kept = torch.nn.functional.pad(targets != -100, (0, 1))
            flat = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=kept, **routed).logits
            token_loss = torch.nn.functional.cross_entropy(flat.float(), targets[targets != -100], reduction="none")
            return [float(part.mean()) for part in token_loss.split((targets != -100).sum(dim=1).tolist())]
        else:  # position t predicts token t + 1
            logits, targets = model(input_ids=input_ids, attention_mask=attention, **routed).logits[:, :-1], labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                                                       ignore_index=-100)
        counted = (targets != -100).sum(dim=1).clamp(min=1)
        return (token_loss.sum(dim=1) / counted).tolist()
