"""Grid expansion: a validated spec becomes named trials (and zero-shot baselines), nothing runs."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from orchestrator.spec import SweepSpec
from trainer.config import TrialConfig
from trainer.data import TrialData

# Always shown in the leaderboard, swept or not.
DISPLAY_KEYS = ("prompt", "lora.rank", "training.learning_rate")
# Keys that change what a zero-shot baseline computes (adapters and training do not).
_BASELINE_PREFIXES = ("prompt", "model.", "dataset.", "generation.")


@dataclass(frozen=True)
class PlannedTrial:
    name: str
    kind: str
    """`trial` (QLoRA fine-tune) or `baseline` (zero-shot)."""
    params: dict[str, Any]
    """Values shown in the leaderboard: DISPLAY_KEYS and every swept key."""
    config: TrialConfig
    swept: tuple[str, ...] = ()
    study_trial: int | None = None
    """Optuna trial number, for trials a study proposed."""


def expand(spec: SweepSpec) -> list[PlannedTrial]:
    """Every grid combination as a trial, in grid order, then one baseline per distinct prompt setting.

    An optuna search plans only its baselines: one per categorical value of the keys that change what
    a zero-shot run computes (prompt, model, ...); the study proposes the trials as it runs.
    """
    if spec.search.type == "optuna":
        axes = [(k, d.choices) for k, d in spec.search.space.items()
                if d.choices is not None and (k == "prompt" or k.startswith(_BASELINE_PREFIXES))]
    else:
        axes = list(spec.search.grid.items())
    trials = [planned_trial(spec, dict(zip([k for k, _ in axes], combo)))
              for combo in itertools.product(*(values for _, values in axes))]
    baselines = _baselines(trials) if spec.search.baselines else []
    return baselines if spec.search.type == "optuna" else trials + baselines


def planned_trial(spec: SweepSpec, values: dict[str, Any], study_trial: int | None = None) -> PlannedTrial:
    """The fine-tune with the given dotted-key values over the spec's defaults; study trials are `t007-...`."""
    config = base_config(spec)
    for key, value in values.items():
        config = with_value(config, key, value, spec)
    swept = {key: get_value(config, key) for key in values}
    shown = {key: get_value(config, key) for key in DISPLAY_KEYS}
    name = trial_name(swept) if study_trial is None else f"t{study_trial:03d}-{trial_name(swept)}"
    return PlannedTrial(name, "trial", {**shown, **swept}, config, tuple(swept), study_trial)


def base_config(spec: SweepSpec) -> TrialConfig:
    base = TrialConfig(model=spec.model, dataset=spec.dataset, lora=spec.lora, quantization=spec.quantization,
                       training=spec.training, generation=spec.generation, scoring=spec.scoring,
                       augmentation=spec.augmentation)
    return with_value(base, "prompt", spec.prompt or next(iter(spec.prompts)), spec)


def _baselines(trials: list[PlannedTrial]) -> list[PlannedTrial]:
    seen: dict[str, PlannedTrial] = {}
    for t in trials:
        keys = ["prompt"] + [k for k in t.swept if k != "prompt" and k.startswith(_BASELINE_PREFIXES)]
        params = {k: t.params[k] for k in keys}
        name = f"{trial_name(params)}-zero-shot"
        if name not in seen:
            seen[name] = PlannedTrial(name, "baseline", params, dataclasses.replace(t.config, zero_shot=True),
                                      tuple(keys))
    return list(seen.values())


def with_value(config: TrialConfig, dotted: str, value: Any, spec: SweepSpec) -> TrialConfig:
    """A copy of `config` with the dotted key set; setting `prompt` also sets its template."""
    if dotted == "prompt":
        return dataclasses.replace(config, prompt=value, prompt_template=spec.prompts[value])
    return _replace_path(config, dotted.split("."), _typed(config, dotted, value))


def _replace_path(obj: Any, keys: list[str], value: Any) -> Any:
    if len(keys) == 1:
        return dataclasses.replace(obj, **{keys[0]: value})
    return dataclasses.replace(obj, **{keys[0]: _replace_path(getattr(obj, keys[0]), keys[1:], value)})


def typed_value(dotted: str, value: Any) -> Any:
    """A YAML value as the type of the trial setting it is for (`"1e-4"` -> 1e-4 for a float key)."""
    return value if dotted == "prompt" else _typed(TrialConfig(), dotted, value)


def _typed(config: TrialConfig, dotted: str, value: Any) -> Any:
    """YAML grid values arrive raw (`1e-4` may be a string); the spec check guaranteed they convert."""
    current = get_value(config, dotted)
    return float(value) if isinstance(current, float) and not isinstance(value, bool) else value


def get_value(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


def trial_name(swept: dict[str, Any]) -> str:
    """Readable and unique within a grid: `v2-r16-lr2e-4`."""
    return "-".join(_label(k, v) for k, v in swept.items()) or "default"


def _label(key: str, value: Any) -> str:
    if key == "prompt":
        return str(value)
    if key == "lora.rank":
        return f"r{value}"
    if key == "training.learning_rate":
        return f"lr{format_float(value)}"
    if key == "model.name":
        return str(value).rstrip("/").split("/")[-1]
    text = format_float(value) if isinstance(value, float) else str(value)
    return f"{key.split('.')[-1]}{text}"


def format_float(value: float) -> str:
    """2e-4 -> `2e-4`, 1.5e-4 -> `1.5e-4`, 0.1 -> `1e-1`: short, exact to 4 digits, no dots lost."""
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def content_key(config: TrialConfig, data: TrialData) -> str:
    """Hash of the resolved config and the exact rows it trains and evaluates on."""
    payload = json.dumps({"config": dataclasses.asdict(config), "data": dataclasses.asdict(data)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
