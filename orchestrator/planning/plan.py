"""Planning: dotted-key values over a spec become named trials (and zero-shot baselines); nothing runs.

Which values a sweep plans is its Search's business (orchestrator.search.strategies); this module names and
builds them."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sweeps.spec import SweepSpec
from trainer.config import ConfigProblem, TrialConfig, cleared_by
from trainer.identity import affects_baseline, baseline_key, zero_shot_config
from trainer.models import quantization_problems

# Always shown in the leaderboard, swept or not.
DISPLAY_KEYS = ("prompt", "lora.rank", "training.learning_rate")
# Characters a trial name (a folder, a TensorBoard run) may hold; anything else in a value becomes `_`.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.~+-]")
_MAX_LABEL_CHARS = 48


@dataclass(frozen=True)
class PlannedTrial:
    name: str
    """Identity within the sweep: unique, stable for the same values, path-safe (store row, trial folder,
    TensorBoard run and Optuna attribute all use it)."""
    kind: str
    """`trial` (QLoRA fine-tune) or `baseline` (zero-shot)."""
    params: dict[str, Any]
    """Values shown in the leaderboard: DISPLAY_KEYS and every swept key."""
    config: TrialConfig
    swept: tuple[str, ...] = ()
    study_trial: int | None = None
    """Optuna trial number, for trials a study proposed."""
    labels: dict[str, str] = field(default_factory=dict)
    """The part of `name` that stands for each swept key's value."""
    baseline: str | None = None
    """Name of the zero-shot baseline it is compared with: same model, prompt, quantization, sequence length,
    data, generation and scoring; None when the sweep has no such baseline."""


def grid_plan(spec: SweepSpec, raw: dict[str, list[Any]]) -> list[PlannedTrial]:
    """Every combination of the `raw` axes as a fine-tune, in grid order (values typed, labels made distinct
    along each axis)."""
    axes = {key: [typed_value(key, v) for v in values] for key, values in raw.items()}
    labels = {key: axis_labels(key, values) for key, values in axes.items()}
    return [planned_trial(spec, dict(zip(axes, combo)), labels=dict(zip(axes, names)))
            for combo, names in zip(itertools.product(*axes.values()), itertools.product(*labels.values()))]


def baselines_of(spec: SweepSpec, trials: list[PlannedTrial]) -> list[PlannedTrial]:
    """One zero-shot baseline per distinct zero-shot setting of `trials` (none when the spec turns them off)."""
    return _baselines(trials) if spec.search.baselines else []


def plan_problems(plan: list[PlannedTrial]) -> list[ConfigProblem]:
    """Every invariant of every planned run, and distinct names. A problem that every fine-tune has is
    reported once, at its own key path; one that only some have names those runs."""
    fine_tunes = {t.name for t in plan if t.kind == "trial"}
    found: dict[str, tuple[ConfigProblem, list[str]]] = {}
    for trial in plan:
        for problem in run_problems(trial.config):
            found.setdefault(problem.render(), (problem, []))[1].append(trial.name)
    problems = [p if fine_tunes <= set(names) else dataclasses.replace(p, path=f"{p.path} (at {', '.join(names)})")
                for p, names in found.values()]
    return problems + _name_problems(plan)


def run_problems(config: TrialConfig) -> list[ConfigProblem]:
    """The invariants of one run: its config's cross-field checks, and its model's saved quantization."""
    return config.problems() + quantization_problems(config)


def _name_problems(plan: list[PlannedTrial]) -> list[ConfigProblem]:
    seen: dict[str, PlannedTrial] = {}
    problems = []
    for t in plan:
        other = seen.setdefault(t.name, t)
        if other is not t:
            problems.append(ConfigProblem("search.grid", "every run needs its own name (its folder and store row)",
                                          [other.params, t.params], f"distinct names; both are {t.name!r}",
                                          "rename a prompt so that no name part reads like another axis' label"))
    return problems


def planned_trial(spec: SweepSpec, values: dict[str, Any], study_trial: int | None = None,
                  labels: dict[str, str] | None = None) -> PlannedTrial:
    """The fine-tune with the given dotted-key values over the spec's defaults; study trials are `t007-...`.
    `labels` are the values' name parts when the caller made them distinct along each grid axis."""
    config = base_config(spec)
    for key, value in values.items():
        config = with_value(config, key, value, spec)
    swept = {key: get_value(config, key) for key in values}
    shown = {key: get_value(config, key) for key in DISPLAY_KEYS}
    parts = labels or {key: label(key, value) for key, value in swept.items()}
    name = "-".join(parts.values()) or "default"
    if study_trial is not None:
        name = f"t{study_trial:03d}-{name}"
    return PlannedTrial(name, "trial", {**shown, **swept}, config, tuple(swept), study_trial, parts)


def base_config(spec: SweepSpec) -> TrialConfig:
    base = TrialConfig(model=spec.model, dataset=spec.dataset, lora=spec.lora, quantization=spec.quantization,
                       training=spec.training, generation=spec.generation, scoring=spec.scoring,
                       augmentation=spec.augmentation)
    return with_value(base, "prompt", spec.prompt or next(iter(spec.prompts)), spec)


def _baselines(trials: list[PlannedTrial]) -> list[PlannedTrial]:
    seen: dict[str, PlannedTrial] = {}
    for t in trials:
        config = zero_shot_config(t.config)
        key = baseline_key(t.config)
        if key not in seen:
            keys = ["prompt"] + [k for k in t.swept if k != "prompt" and affects_baseline(k)]
            name = "-".join(_part(t, k) for k in keys) + "-zero-shot"
            seen[key] = PlannedTrial(name, "baseline", {k: get_value(config, k) for k in keys}, config, tuple(keys))
    return list(seen.values())


def _part(trial: PlannedTrial, key: str) -> str:
    """The name part the trial's own name used for `key` (so a baseline's labels match its trials')."""
    return trial.labels[key] if key in trial.labels else label(key, get_value(trial.config, key))


def with_baseline(trial: PlannedTrial, baselines: list[PlannedTrial]) -> PlannedTrial:
    """The trial with the name of its own baseline (None when the plan has none that matches)."""
    key = baseline_key(trial.config)
    found = next((b.name for b in baselines if baseline_key(b.config) == key), None)
    return dataclasses.replace(trial, baseline=found)


def with_value(config: TrialConfig, dotted: str, value: Any, spec: SweepSpec) -> TrialConfig:
    """A copy of `config` with the dotted key set; setting `prompt` also sets its template."""
    if dotted == "prompt":
        return dataclasses.replace(config, prompt=value, prompt_template=spec.prompts[value])
    config = _replace_path(config, dotted.split("."), _typed(config, dotted, value))
    cleared = cleared_by(dotted, value)  # epochs: [1, 3] replaces the spec's max_steps
    if cleared is not None:
        config = _replace_path(config, cleared[0].split("."), cleared[1])
    return config


def _replace_path(obj: Any, keys: list[str], value: Any) -> Any:
    if len(keys) == 1:
        return dataclasses.replace(obj, **{keys[0]: value})
    return dataclasses.replace(obj, **{keys[0]: _replace_path(getattr(obj, keys[0]), keys[1:], value)})


def typed_value(dotted: str, value: Any) -> Any:
    """A YAML value as the type of the trial setting it is for (`"1e-4"` -> 1e-4 for a float key)."""
    return value if dotted == "prompt" else _typed(TrialConfig(), dotted, value)


def _typed(config: TrialConfig, dotted: str, value: Any) -> Any:
    """YAML grid values arrive raw (`1e-4` may be a string); the spec check guaranteed they convert."""
    *parents, name = dotted.split(".")
    hint = typing.get_type_hints(type(get_value(config, ".".join(parents)) if parents else config))[name]
    floats = hint is float or float in typing.get_args(hint)
    return float(value) if floats and value is not None and not isinstance(value, bool) else value


def path_safe(name: str) -> bool:
    """May `name` be a trial's folder, TensorBoard run and store name as it is?"""
    return bool(name) and not _UNSAFE.search(name)


def get_value(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


def axis_labels(key: str, values: list) -> list[str]:
    """Name parts of one grid axis, distinct for distinct values (the spec check refuses equal values):
    floats get every digit they need (lr1.00001e-4, lr1.00002e-4), anything else a short digest."""
    labels = [label(key, v) for v in values]
    if len(set(labels)) < len(labels) and all(isinstance(v, float) for v in values):
        labels = [label(key, v, exact=True) for v in values]
    return [f"{text}~{_digest(v)}" if labels.count(text) > 1 else text for text, v in zip(labels, values)]


def label(key: str, value: Any, exact: bool = False) -> str:
    """The name part of one value: `r16`, `lr2e-4`, `v2`, `m1` (a model path's last folder); path-safe."""
    if isinstance(value, float) and not isinstance(value, bool):
        value = exact_float(value) if exact else format_float(value)
    prefixes = {"prompt": "", "lora.rank": "r", "training.learning_rate": "lr", "model.name": ""}
    if key == "model.name":
        value = str(value).rstrip("/").split("/")[-1]
    if isinstance(value, (list, tuple)):
        value = "+".join(map(str, value))  # target_modules [q_proj, v_proj] -> q_proj+v_proj
    text = prefixes.get(key, key.split(".")[-1]) + str(value)
    safe = _UNSAFE.sub("_", text).lstrip(".-~") or "_"
    return safe if len(safe) <= _MAX_LABEL_CHARS else f"{safe[:_MAX_LABEL_CHARS - 7]}~{_digest(value)}"


def format_float(value: float) -> str:
    """2e-4 -> `2e-4`, 1.5e-4 -> `1.5e-4`, 0.1 -> `1e-1`: short, exact to 4 digits, no dots lost; 1 to 999 as
    written (epochs 3.0 -> `3`, 2.5 -> `2.5`)."""
    if 1 <= abs(value) < 1000 and float(f"{value:.4g}") == value:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def exact_float(value: float) -> str:
    """Every digit of the shortest repr that reads back as `value`: 1.00001e-4."""
    mantissa, _, exponent = f"{Decimal(repr(value)).normalize():e}".partition("e")
    return f"{mantissa}e{int(exponent or 0)}"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
