"""Training-data augmentation: speaker swap (exchange who says what, consistently in the dialogue and
its summary), applied to the training split only, at a configurable ratio, with a fixed seed."""

from __future__ import annotations

import dataclasses
import random
import re

from trainer.config import AugmentationConfig
from trainer.data import Example, TrialData

# A speaker is whatever starts a line before the first colon: `#Person1#:`, `Amanda:`, `민수:`.
_SPEAKER = re.compile(r"^\s*([^:\n]{1,40}?)\s*:", re.MULTILINE)


def speakers(dialogue: str) -> list[str]:
    """Distinct speaker names or tags in order of first turn."""
    return list(dict.fromkeys(m.group(1).strip() for m in _SPEAKER.finditer(dialogue)))


def swap_speakers(example: Example) -> Example | None:
    """The example with its speakers rotated (two speakers: exchanged) everywhere they are named;
    None when the dialogue has fewer than two speakers."""
    names = speakers(example.dialogue)
    if len(names) < 2:
        return None
    mapping = dict(zip(names, names[1:] + names[:1]))
    # One pass with every name at once, longest first. A name must not run on into Latin letters or
    # digits ("Ann" never rewrites "Anna"), but may carry a Korean particle ("민수와").
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                         + r")(?![A-Za-z0-9_\u00c0-\u024f])")
    swap = lambda text: pattern.sub(lambda m: mapping[m.group(1)], text)  # noqa: E731
    return dataclasses.replace(example, id=f"{example.id}#swap", dialogue=swap(example.dialogue),
                               summary=swap(example.summary), references=tuple(swap(r) for r in example.references))


def augment(train: tuple[Example, ...], cfg: AugmentationConfig) -> tuple[Example, ...]:
    """`train` plus speaker-swapped copies of round(ratio x rows) of its rows, chosen with the seed."""
    count = round(cfg.speaker_swap * len(train))
    if not count:
        return train
    picked = sorted(random.Random(cfg.seed).sample(range(len(train)), count))
    swapped = [s for s in (swap_speakers(train[i]) for i in picked) if s is not None]
    return train + tuple(swapped)


def training_examples(data: TrialData, cfg: AugmentationConfig) -> tuple[Example, ...]:
    """What a trial trains on: the training rows, their speaker-swapped copies, and the paraphrased rows the
    driver prepared for this augmentation."""
    return augment(data.train, cfg) + (data.paraphrased if cfg.paraphrase else ())
