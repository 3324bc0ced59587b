"""Held-out loss: teacher-forced cross-entropy of the eval rows' reference summaries, summary tokens only.

Each (example, reference) pair is tokenized as training tokenizes a row: the prompt (its dialogue cut so that
prompt + summary fit `max_seq_length`) and the summary, with the end-of-turn tokens of the chat template or the
end-of-sequence token. The loss of one pair is the mean cross-entropy over its summary tokens; an example's
loss is the mean over its references. Lower is better; at zero-shot it is the base model's own fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import TrialConfig

# Tokens the chat template puts after the summary (end-of-turn and newline), plus slack.
COMPLETION_END_TOKENS = 4


@dataclass(frozen=True)
class Pair:
    """One reference of one example, ready for the model: encoder input and labels for seq2seq models,
    else the whole sequence with the prompt's label positions at -100."""

    example: int
    input_ids: list[int]
    labels: list[int]


def heldout_pairs(cfg: TrialConfig, tokenizer, family, dialogues: list[str],
                  references: list[tuple[str, ...]]) -> list[Pair]:
    """Every (example, reference) pair that fits `max_seq_length`, tokenized once, as the model's family
    (`trainer.families`) builds one."""
    out = []
    for index, (dialogue, refs) in enumerate(zip(dialogues, references)):
        for summary in refs:
            pair = family.heldout_pair(cfg, tokenizer, index, dialogue, summary)
            if pair is not None:
                out.append(pair)
    return out


def heldout_loss(model, pairs: list[Pair], examples: int, batch_size: int, pad_id: int,
                 adapter_names: list[str] | None = None, whole=None) -> list[float | None]:
    """Per example: the mean over its references of the mean cross-entropy of their summary tokens (None when
    no reference fitted). `batch_size` examples (with all their references) per forward pass; the batch is
    halved whenever one runs out of memory, as generation's is. `adapter_names` (one per pair) routes each pair
    through its own adapter of a PEFT model (a pack). `whole` scores padded pairs read whole: the model family's
    `whole_losses` (trainer.families; default `causal_losses`).

    A decoder-only model reads the prompt tokens an example's references share once (`shared_prefix`: a KV
    cache), and each reference continues from it: DialogSum's 3 references cost one prompt, not three. The
    tokens and positions each reference sees are those of its own whole sequence; only the order of the
    arithmetic differs (measured in tests/test_trial.py)."""
    return HeldoutLoss(model, pairs, examples, batch_size, pad_id, adapter_names, whole).losses()


class HeldoutLoss:
    """`heldout_loss` in two passes, so that an evaluation reads each prompt once for generation and for the
    loss: `from_prefill` (given to `generate` as `on_prefill`) continues each reference from the KV cache of the
    prompt the generate call just read, where the reference's prompt is token for token that one; `losses`
    then scores the other examples as `heldout_loss` does and returns every example's mean. The continuation
    sees the tokens and positions of the pair's whole sequence, as in `heldout_loss`; only the batches differ
    (the generate call's left-padded prompts), so float32 losses agree to about 1e-6 relative (tests)."""

    def __init__(self, model, pairs: list[Pair], examples: int, batch_size: int, pad_id: int,
                 adapter_names: list[str] | None = None, whole=None):
        self.model, self.examples, self.batch_size, self.pad_id = model, examples, batch_size, pad_id
        self.whole = whole or causal_losses
        self.pending: dict[int, _Group] = {}
        self.extra: list[_Group] = []  # more groups of an example (split over adapters): scored the usual way
        for group in _groups(pairs, adapter_names):
            if group.example in self.pending:
                self.extra.append(group)
            else:
                self.pending[group.example] = group
        self.split = {g.example for g in self.extra}
        self.scored: dict[int, list[float]] = {}

    def from_prefill(self, prefill) -> None:
        """Score the examples of one generate call (an `evaluation.generate.Prefill`) whose references begin
        with enough of the prompt that call read (`_served_prefix`)."""
        import torch

        rows = []  # (the prompt's row in the call, its group, how many of its tokens the pairs continue from)
        for row, index in enumerate(prefill.indices):
            group = self.pending.get(index)
            if group is None or index in self.split:
                continue
            served = _served_prefix(group, prefill.input_ids[row][prefill.attention_mask[row].bool()].tolist())
            if served:
                rows.append((row, group, served))
        if not rows:
            return
        try:
            scored = _prefilled_losses(self.model, prefill, rows, self.pad_id, torch)
        except torch.OutOfMemoryError:  # left to `losses`, which halves its batches
            torch.cuda.empty_cache()
            return
        self._keep([g for _, g, _ in rows], scored)

    def losses(self) -> list[float | None]:
        """Every example's mean loss: the examples no prefill served are run now, prompt and all."""
        import torch

        batch_size = self.batch_size
        # Longest continuation first: each batch holds similar lengths (less padding), and OOM shows up at once.
        groups = sorted(list(self.pending.values()) + self.extra, key=lambda g: g.rest_tokens, reverse=True)
        start = 0
        while start < len(groups):
            batch = groups[start:start + batch_size]
            try:
                scored = _group_losses(self.model, batch, self.pad_id, torch, self.whole)
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                batch_size = len(batch) // 2  # each loss is per sequence, so the batch size does not change it
                print(f"WARNING: the held-out loss ran out of memory; its batch size halved to {batch_size}",
                      flush=True)
                torch.cuda.empty_cache()
                continue
            self._keep(batch, scored)
            start += len(batch)
        self.extra = []
        losses = self.scored
        return [sum(losses[i]) / len(losses[i]) if i in losses else None for i in range(self.examples)]

    def _keep(self, groups: list[_Group], scored: list[float]) -> None:
        for pair, loss in zip((p for g in groups for p in g.pairs), scored):
            self.scored.setdefault(pair.example, []).append(loss)
        for group in groups:
            if self.pending.get(group.example) is group:
                del self.pending[group.example]


def _served_prefix(group: _Group, prompt: list[int]) -> int:
    """How many leading tokens of a generate call's `prompt` the pairs of `group` continue from: the tokens they
    all begin with, short of the prompt's last token (not in the call's cache) and of each pair's last prompt
    token (its logits predict the summary). 0 where that reads more tokens than the group's own prefix would:
    n pairs each re-reading (prefix - served) tokens cost more than reading the prefix once (a generation prompt
    cut much shorter than the loss's)."""
    served = min([len(prompt) - 1] + [_first_label(p) - 1 for p in group.pairs])
    for p in group.pairs:
        served = next((i for i in range(served) if p.input_ids[i] != prompt[i]), served)
    worth_it = len(group.pairs) * (group.prefix - served) < max(group.prefix, 1)
    return served if served > 0 and worth_it else 0


def _first_label(pair: Pair) -> int:
    return next(i for i, label in enumerate(pair.labels) if label != -100)


@dataclass(frozen=True)
class _Group:
    """The pairs of one example through one adapter, and the prompt tokens they share (`shared_prefix`)."""

    pairs: tuple[Pair, ...]
    adapter: str | None
    prefix: int

    @property
    def example(self) -> int:
        return self.pairs[0].example

    @property
    def rest_tokens(self) -> int:
        """The most tokens a pair adds after the shared prefix."""
        return max(len(p.input_ids) for p in self.pairs) - self.prefix


def _groups(pairs: list[Pair], adapter_names: list[str] | None) -> list[_Group]:
    runs: list[tuple[list[Pair], str | None]] = []  # consecutive pairs of one example and one adapter
    for pair, name in zip(pairs, adapter_names or [None] * len(pairs)):
        if runs and runs[-1][0][0].example == pair.example and runs[-1][1] == name:
            runs[-1][0].append(pair)
        else:
            runs.append(([pair], name))
    return [_Group(tuple(run), name, shared_prefix(run)) for run, name in runs]


def shared_prefix(pairs: list[Pair]) -> int:
    """How many leading tokens every pair has in common, short of the last prompt token of each (whose logits
    predict the first summary token, so they are computed with the summary)."""
    limit = min(_first_label(p) - 1 for p in pairs)
    first = pairs[0].input_ids
    for i in range(max(limit, 0)):
        if any(p.input_ids[i] != first[i] for p in pairs[1:]):
            return i
    return max(limit, 0)


def _group_losses(model, batch: list[_Group], pad_id: int, torch, whole) -> list[float]:
    pairs = [p for g in batch for p in g.pairs]
    names = [g.adapter for g in batch for _ in g.pairs]
    routed = {} if batch[0].adapter is None else {"adapter_names": names}
    if min(g.prefix for g in batch) == 0:  # nothing shared (an encoder-decoder's pairs share no label prefix)
        return _batch_losses(model, pairs, pad_id, torch, routed, whole)
    return _continued_losses(model, batch, pad_id, torch, routed)


def _padded(torch, rows: list[list[int]], value: int, device):
    """Right padded: a padded query still sees its row's real tokens (no row is masked out whole)."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], device=device)


def _continued_losses(model, batch: list[_Group], pad_id: int, torch, routed: dict) -> list[float]:
    """One forward over each group's shared prefix, then one over every pair's rest on a copy of its group's KV
    cache, at the positions the pair's whole sequence gives them (the prefix's padding masked out between)."""
    device = model.device
    heads = [g.pairs[0].input_ids[:g.prefix] for g in batch]
    head_ids = _padded(torch, heads, pad_id, device)
    head_mask = _padded(torch, [[1] * len(h) for h in heads], 0, device)
    head_routed = {} if not routed else {"adapter_names": [g.adapter for g in batch]}
    with torch.inference_mode():
        head = model(input_ids=head_ids, attention_mask=head_mask, use_cache=True, **head_routed)
    cache_arg = _cache_argument(model)
    cache = head[cache_arg] if cache_arg in head else head.past_key_values
    owner = [k for k, g in enumerate(batch) for _ in g.pairs]
    pairs = [(p, g.prefix) for g in batch for p in g.pairs]
    return _continue(model, cache, head_mask, owner, pairs, pad_id, torch, routed)


def _prefilled_losses(model, prefill, rows: list[tuple[int, _Group, int]], pad_id: int, torch) -> list[float]:
    """Each pair of `rows` continued from the first `served` tokens of its prompt's row in a generate call's
    cache. Left padding ends every row's prompt (short of its last token) at the cache's last column; the prompt
    tokens after the served ones are masked out, and the pair reads its own from there."""
    groups = [g for _, g, _ in rows]
    routed = {} if groups[0].adapter is None else {"adapter_names": [g.adapter for g in groups for _ in g.pairs]}
    width = prefill.input_ids.shape[1] - 1
    head_mask = prefill.attention_mask[:, :width].clone()
    for row, _, served in rows:
        cached = int(prefill.attention_mask[row].sum()) - 1  # the row's prompt tokens in the cache
        head_mask[row, width - cached + served:] = 0
    owner = [row for row, g, _ in rows for _ in g.pairs]
    pairs = [(p, served) for _, g, served in rows for p in g.pairs]
    return _continue(model, prefill.cache, head_mask, owner, pairs, pad_id, torch, routed)


def _continue(model, cache, head_mask, owner: list[int], pairs: list[tuple[Pair, int]], pad_id: int, torch,
              routed: dict) -> list[float]:
    """Every pair's tokens after its first `n`, read on row `owner[k]` of a KV cache of heads (masked by
    `head_mask`), at the positions the pair's whole sequence gives them. The cache is consumed."""
    device = model.device
    rest_ids = _padded(torch, [p.input_ids[n:] for p, n in pairs], pad_id, device)
    rest_mask = _padded(torch, [[1] * (len(p.input_ids) - n) for p, n in pairs], 0, device)
    labels = _padded(torch, [p.labels[n:] for p, n in pairs], -100, device)
    rest_positions = torch.tensor([n for _, n in pairs], device=device)[:, None] + torch.arange(rest_ids.shape[1],
                                                                                               device=device)
    with torch.inference_mode():
        cache.batch_select_indices(torch.tensor(owner, device=device))  # each pair continues its own prompt
        continued = {"input_ids": rest_ids, "attention_mask": torch.cat([head_mask[owner], rest_mask], dim=1),
                     "position_ids": rest_positions, _cache_argument(model): cache, "use_cache": True, **routed}
        return token_losses(model, continued, labels, torch)


def _cache_argument(model) -> str:
    """The KV cache's name in the model's forward: `cache` since transformers 5.25, `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def causal_losses(model, input_ids, attention_mask, labels, routed: dict, torch) -> list[float]:
    """Padded decoder-only pairs read whole: each row's mean cross-entropy of its labelled tokens."""
    return token_losses(model, dict(input_ids=input_ids, attention_mask=attention_mask, **routed), labels, torch)


def token_losses(model, inputs: dict, labels, torch) -> list[float]:
    """Mean cross-entropy of each row's labelled tokens, position t predicting token t + 1."""
    # TRL comes with trainer.sft: imported where a loss is computed, not when this module is.
    from trainer.sft import slices_logits_by_mask, summary_token_losses

    if slices_logits_by_mask(model):  # the vocabulary projection only where a summary token is predicted
        token_loss, scored = summary_token_losses(model, inputs, labels)
        return [float(part.mean()) for part in token_loss.split(scored.sum(dim=1).tolist())]
    return mean_token_losses(model(**inputs).logits[:, :-1], labels[:, 1:], torch)


def mean_token_losses(logits, targets, torch) -> list[float]:
    """Per row: the mean cross-entropy of `logits` against `targets` where the target is not -100."""
    token_loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                                                   ignore_index=-100)
    return (token_loss.sum(dim=1) / (targets != -100).sum(dim=1).clamp(min=1)).tolist()


def _batch_losses(model, batch: list[Pair], pad_id: int, torch, routed: dict, whole=None) -> list[float]:
    """Each pair's whole sequence in one forward (`whole`: the family's scoring, default `causal_losses`):
    encoder-decoder models, and prompts that share nothing."""
    device = model.device
    input_ids = _padded(torch, [p.input_ids for p in batch], pad_id, device)
    attention = _padded(torch, [[1] * len(p.input_ids) for p in batch], 0, device)
    labels = _padded(torch, [p.labels for p in batch], -100, device)
    with torch.inference_mode():
        return (whole or causal_losses)(model, input_ids, attention, labels, routed, torch)
