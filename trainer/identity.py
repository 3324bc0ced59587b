"""A trial's identity: one hash of what it computes, from which both of its keys follow.

- The content key (the store row): the resolved config, the exact rows it trains and evaluates on, and the
  model's identity (trainer.models.model_identity: its files' hashes, or its hub revision). A finished
  trial with the same content key is reused.
- The resume key (a checkpoint's): the same, seen as training sees it: micro batch and accumulation as their
  product (an out-of-memory retry halves one and doubles the other) and the eval batch size left out (it
  changes how prompts are grouped, not what is learned). A local model rewritten at the same path changes
  both keys, so its old checkpoints are never resumed.
No torch or transformers here: the Ray task computes the resume key before a trial imports anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from trainer.config import DEFAULT_PARAPHRASE_PROMPT, TrialConfig

# Settings added after trials were stored: left at these defaults they are not part of the key, so a stored
# trial keeps its key (and is reused) after an upgrade; set to anything else they are.
_ADDED_LATER = {"config": {"training": {"epochs": None, "warmup_ratio": None, "optimizer": "adamw"},
                           "augmentation": {"paraphrase": 0.0, "paraphrase_model": None,
                                            "paraphrase_prompt": DEFAULT_PARAPHRASE_PROMPT}},
                "data": {"paraphrased": [], "paraphrase_source": ""}}


def trial_key(config: TrialConfig, data, model: dict | None, as_training_sees_it: bool = False) -> str:
    """The hash both keys come from; `as_training_sees_it` gives the resume key's view of the config."""
    if as_training_sees_it:
        config = _training_view(config)
    payload = {"config": dataclasses.asdict(config), "data": dataclasses.asdict(data), "model": model}
    _drop_defaults(payload, _ADDED_LATER)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def content_key(config: TrialConfig, data, model: dict | None = None) -> str:
    """The store row's key: a finished trial with the same one is reused."""
    return trial_key(config, data, model)


def resume_key(config: TrialConfig, data, model: dict | None) -> str:
    """What a checkpoint must have been trained on to be resumed."""
    return trial_key(config, data, model, as_training_sees_it=True)


def _training_view(config: TrialConfig) -> TrialConfig:
    t = config.training
    training = dataclasses.replace(t, micro_batch_size=t.micro_batch_size * t.gradient_accumulation_steps,
                                   gradient_accumulation_steps=1)
    return dataclasses.replace(config, training=training,
                               generation=dataclasses.replace(config.generation, eval_batch_size=1))


def _drop_defaults(node: dict, defaults: dict) -> None:
    for key, default in defaults.items():
        if isinstance(default, dict):
            _drop_defaults(node.get(key, {}), default)
        elif key in node and _same(node[key], default):
            del node[key]


def _same(value: Any, default: Any) -> bool:
    return list(value) == default if isinstance(default, list) else value == default
