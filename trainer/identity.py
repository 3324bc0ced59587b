"""A trial's identity: one hash of what it computes, from which both of its keys follow.

- The content key (the store row): the resolved config, the exact rows it trains and evaluates on, and the
  model's identity (trainer.models.model_identity: its files' hashes, or its hub revision). A finished
  trial with the same content key is reused.
- The resume key (a checkpoint's): the same, seen as training sees it: micro batch and accumulation as their
  product (an out-of-memory retry halves one and doubles the other) and the eval batch size left out (it
  changes how prompts are grouped, not what is learned). A local model rewritten at the same path changes
  both keys, so its old checkpoints are never resumed.
- The baseline key: what a trial shares with its zero-shot baseline, from the `baseline` field metadata.
No torch or transformers here: the Ray task computes the resume key before a trial imports anything.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from typing import Any

from trainer.config import TrialConfig
from trainer.data import TrialData


def added_later(cls: type) -> dict:
    """The fields of `cls` (and its sections) marked `since`, with their defaults: {name: default or {...}}."""
    return _marked(cls, lambda f: "since" in f.metadata, _default)


def not_identity(cls: type) -> dict:
    """The fields of `cls` (and its sections) marked `identity: False`: {name: True or {...}}."""
    return _marked(cls, lambda f: f.metadata.get("identity") is False, lambda f: True)


def _marked(cls: type, marked, value) -> dict:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if marked(f):
            out[f.name] = value(f)
        elif dataclasses.is_dataclass(section := _section_type(cls, f)):
            nested = _marked(section, marked, value)
            if nested:
                out[f.name] = nested
    return out


def trial_key(config: TrialConfig, data, model: dict | None, as_training_sees_it: bool = False) -> str:
    """The hash both keys come from; `as_training_sees_it` gives the resume key's view of the config."""
    if as_training_sees_it:
        config = _training_view(config)
    payload = {"config": dataclasses.asdict(config), "data": dataclasses.asdict(data), "model": model}
    _drop_defaults(payload, {"config": added_later(TrialConfig), "data": added_later(TrialData)})
    _drop_keys(payload["config"], not_identity(TrialConfig))
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


def _drop_keys(node: dict, keys: dict) -> None:
    for key, nested in keys.items():
        if isinstance(nested, dict):
            _drop_keys(node.get(key, {}), nested)
        else:
            node.pop(key, None)


def _same(value: Any, default: Any) -> bool:
    return list(value) == list(default) if isinstance(default, (list, tuple)) else value == default


def affects_baseline(dotted: str) -> bool:
    """Does this dotted trial key change what a zero-shot run computes? The deepest field or section along its
    path that carries `baseline` metadata decides (trainer.config); unmarked means no."""
    cls, relevant = TrialConfig, False
    for name in dotted.split("."):
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        relevant = f.metadata.get("baseline", relevant)
        cls = _section_type(cls, f)
        if not dataclasses.is_dataclass(cls):
            break
    return relevant


def zero_shot_config(config: TrialConfig) -> TrialConfig:
    """The baseline of a trial: its `baseline` sections whole (model, prompt, quantization, data, generation,
    scoring) and the marked fields of the others (the sequence length), with no adapter and no training. Not its
    seed: decoding is greedy or beam search, never sampled, so a zero-shot run is the same for every seed, and
    the trials of a seed axis share one baseline."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(TrialConfig):
        if f.metadata.get("baseline") or f.name == "zero_shot":
            continue
        section = _section_type(TrialConfig, f)
        if dataclasses.is_dataclass(section):
            value = getattr(config, f.name)
            changes[f.name] = section(**{g.name: getattr(value, g.name) for g in dataclasses.fields(section)
                                         if g.metadata.get("baseline")})
        else:
            changes[f.name] = _default(f)
    return dataclasses.replace(config, zero_shot=True, **changes)


def baseline_key(config: TrialConfig) -> str:
    """Equal for every trial that one zero-shot run stands for: inside the baseline's sections, the fields marked
    `baseline: False` (the training rows) do not count either."""
    view = zero_shot_config(config)
    cleared = {}
    for f in dataclasses.fields(TrialConfig):
        section = _section_type(TrialConfig, f)
        if dataclasses.is_dataclass(section):
            train_only = {g.name: _default(g) for g in dataclasses.fields(section) if g.metadata.get("baseline") is False}
            cleared[f.name] = dataclasses.replace(getattr(view, f.name), **train_only)
    return json.dumps(dataclasses.asdict(dataclasses.replace(view, **cleared)), sort_keys=True, default=str)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _section_type(cls: type, f: dataclasses.Field) -> Any:
    """The type of field `f` (annotations are strings under `from __future__ import annotations`)."""
    return _hints(cls).get(f.name)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
