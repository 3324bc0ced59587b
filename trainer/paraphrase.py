"""Paraphrase augmentation: training dialogues rewritten turn by turn by a local causal LM.

Each turn's text is paraphrased on its own and put back after its speaker tag, so `#Person1#:` or `Amanda:`
and the turn order survive exactly; the summary is left as it was. Generation is sampled with a fixed seed and
runs once per sweep, on the driver, before any trial. Every paraphrased dialogue is cached under the cache root
by the generator's identity, the prompt, the decoding settings and the dialogue's own text, so a re-run, another
trial or a larger share reuses what was generated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

from trainer.config import AugmentationConfig
from trainer.data import Example

TEMPERATURE = 0.7  # sampled: greedy decoding of a small model mostly copies the sentence back
TOP_P = 0.9
BATCH_SIZE = 16
# A turn: its speaker tag up to the first colon, then the text (the same rule as speaker swap).
_TURN = re.compile(r"^(\s*[^:\n]{1,40}?\s*:\s*)(.+)$")

Generate = Callable[[list[str]], list[str]]


def chosen_rows(count_of_rows: int, cfg: AugmentationConfig) -> list[int]:
    """Indices of the rows to paraphrase: a seeded order cut at round(share x rows), so a larger share keeps
    every row of a smaller one (and its cached paraphrases)."""
    order = list(range(count_of_rows))
    random.Random(cfg.seed).shuffle(order)
    return sorted(order[:round(cfg.paraphrase * count_of_rows)])


def provenance(cfg: AugmentationConfig, identity: dict) -> dict:
    """What made the paraphrases: stored with the sweep and part of the cache key."""
    return {"generator": cfg.paraphrase_model, "generator_identity": identity, "prompt": cfg.paraphrase_prompt,
            "seed": cfg.seed, "temperature": TEMPERATURE, "top_p": TOP_P}


def describe(cfg: AugmentationConfig, cache: ParaphraseCache) -> str:
    """How the paraphrases were made, for the sweep's notes; the digest names the generator's files as well."""
    return (f"{cfg.paraphrase_model} (settings digest {cache.path.stem}), seed {cfg.seed}, temperature "
            f"{TEMPERATURE}, top_p {TOP_P}, prompt {cfg.paraphrase_prompt!r}")


class ParaphraseCache:
    """One JSON file per generator setting (its name a digest of them): dialogue digest -> paraphrased dialogue."""

    def __init__(self, root: Path, settings: dict):
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.path = root / "paraphrases" / f"{digest}.json"
        self.entries: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, dialogue: str) -> str | None:
        return self.entries.get(_digest(dialogue))

    def put_all(self, pairs: dict[str, str]) -> None:
        self.entries.update({_digest(d): p for d, p in pairs.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, ensure_ascii=False))
        tmp.replace(self.path)  # atomic: a concurrent reader sees the old file or the new one


def paraphrased_examples(train: tuple[Example, ...], cfg: AugmentationConfig, cache: ParaphraseCache,
                         generate: Callable[[], Generate]) -> tuple[tuple[Example, ...], int]:
    """The chosen rows with paraphrased dialogues (ids `<id>#para`), and how many were generated now;
    `generate` is called (to load the generator) only when some row is not cached."""
    rows = [train[i] for i in chosen_rows(len(train), cfg)]
    missing = list(dict.fromkeys(e.dialogue for e in rows if cache.get(e.dialogue) is None))
    if missing:
        print(f"paraphrase: generating {len(missing)} of {len(rows)} dialogues with {cfg.paraphrase_model} "
              f"(once; the rest are cached)", file=sys.stderr, flush=True)
        cache.put_all(dict(zip(missing, paraphrase_dialogues(missing, generate()))))
    out = tuple(dataclasses.replace(e, id=f"{e.id}#para", dialogue=cache.get(e.dialogue)) for e in rows)
    return out, len(missing)


def paraphrase_dialogues(dialogues: list[str], generate: Generate) -> list[str]:
    """Each dialogue with every turn's text paraphrased and its speaker tag kept; a turn the generator returns
    empty stays as it was."""
    lines = [d.splitlines() for d in dialogues]
    turns = [(i, j, m) for i, ls in enumerate(lines) for j, line in enumerate(ls) if (m := _TURN.match(line))]
    rewritten = generate([m.group(2).strip() for _, _, m in turns]) if turns else []
    for (i, j, m), text in zip(turns, rewritten):
        text = text.strip().splitlines()[0].strip() if text.strip() else ""
        lines[i][j] = m.group(1) + (text or m.group(2))
    return ["\n".join(ls) for ls in lines]


def load_generator(path: str, cfg: AugmentationConfig) -> Generate:
    """A batch function texts -> paraphrases, sampling from the causal LM at `path` (float32, no quantization)."""
    import torch
    from transformers import AutoModelForCausalLM

    from evaluation.generate import generate
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    chat = bool(getattr(tokenizer, "chat_template", None))

    def prompt(text: str) -> str:
        asked = cfg.paraphrase_prompt.replace("{text}", text)
        if chat:
            return tokenizer.apply_chat_template([{"role": "user", "content": asked}], tokenize=False,
                                                 add_generation_prompt=True)
        return asked + "\nRewritten:"

    def run(texts: list[str]) -> list[str]:
        torch.manual_seed(cfg.seed)
        budget = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        outs = generate(model, tokenizer, [prompt(t) for t in texts], max_new_tokens=2 * budget + 8,
                        batch_size=BATCH_SIZE, add_special_tokens=not chat,
                        decoding={"do_sample": True, "temperature": TEMPERATURE, "top_p": TOP_P})
        return [o.text for o in outs]

    return run


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
