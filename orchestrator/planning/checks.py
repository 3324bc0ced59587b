"""The spec's cross-field checks: each returns every problem it finds (key path, given, allowed, fix)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from evaluation.metrics import BERTSCORE_METRICS, OBJECTIVES, metric
from sweeps import schema
from orchestrator.planning.datachecks import data_problems
from sweeps.spec import Dimension, OutputConfig, SweepSpec
from trainer import prompts as prompt_rules
from trainer.config import PROMPT_PLACEHOLDER, ConfigProblem, TrialConfig, paged_optimizer_problem
from trainer.models import is_local, model_problem

# TrialConfig paths a grid may not set: they are derived per trial.
_DERIVED = {"prompt_template", "zero_shot", "warm_start"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys that change which eval examples a trial scores (the Wilcoxon pruner pairs them across trials).
_EVAL_SET_KEYS = {"dataset.name", "dataset.eval_file", "dataset.eval_split", "dataset.eval_examples",
                  "dataset.sample_seed", "dataset.mirror_dir", "training.interim_eval_examples"}
# The section of `search` each search.type reads (the other is refused, so a typo'd type is not silent).
_READS = {"grid": "grid", "optuna": "space"}


def semantic_problems(spec: SweepSpec) -> list[ConfigProblem]:
    problems = _name_problems(spec) + _prompt_problems(spec) + _grid_problems(spec) + _study_problems(spec)
    problems += _model_problems(spec) + data_problems(spec.dataset) + _output_problems(spec.output)
    problems += _optimizer_problems(spec)
    bert = spec.scoring.bertscore_model
    if bert is not None and is_local(bert) and not (Path(bert).expanduser() / "config.json").exists():
        problems.append(ConfigProblem("scoring.bertscore_model", "a local BERTScore encoder must be a model folder",
                                      bert, "a folder with config.json and tokenizer files, a hub id such as "
                                      "roberta-large (downloaded by the first trial), or null (off)",
                                      "fix the path, or give a hub id"))
    return problems


def _optimizer_problems(spec: SweepSpec) -> list[ConfigProblem]:
    """Paged optimizers page GPU memory: refused for trials that get no GPU (a GPU-less cluster: at `sweep run`)."""
    if spec.resources.gpus_per_trial > 0:
        return []
    found = (paged_optimizer_problem(path, value, "resources.gpus_per_trial: 0 gives trials no GPU")
             for path, value in _given(spec, "training.optimizer", spec.training.optimizer))
    return [p for p in found if p is not None]


def _given(spec: SweepSpec, key: str, base: Any) -> list[tuple[str, Any]]:
    """(key path, value) of every value a run can get for `key`: the spec's own, each grid item, each study choice."""
    out = [(key, base)] + [(f"search.grid.{key}[{i}]", v) for i, v in enumerate(spec.search.grid.get(key, []))]
    if key in spec.search.space:
        out += [(f"search.space.{key}.choices[{i}]", v) for i, v in enumerate(spec.search.space[key].choices or [])]
    return out


def _name_problems(spec: SweepSpec) -> list[ConfigProblem]:
    if _SAFE_NAME.match(spec.name):
        return []
    return [ConfigProblem("name", "a sweep needs a name usable as a folder name", spec.name,
                          "letters, digits, '_', '-', '.'", "e.g. name: grid_2x2x2")]


def _prompt_problems(spec: SweepSpec) -> list[ConfigProblem]:
    problems = []
    if not spec.prompts:
        problems.append(ConfigProblem("prompts", "at least one prompt template is needed", {},
                                      "name: template pairs", 'prompts: {v1: "Summarize:\\n{dialogue}"}'))
    for key, template in spec.prompts.items():
        if not _SAFE_NAME.match(key):
            problems.append(ConfigProblem(f"prompts.{key}", "a prompt name becomes part of trial folder names",
                                          key, "letters, digits, '_', '-', '.', starting with a letter or digit",
                                          f"rename it, e.g. {re.sub(r'[^A-Za-z0-9_.-]', '_', key).lstrip('._-') or 'v1'}"))
        try:
            found = prompt_rules.placeholders(template)
        except ValueError as exc:
            problems.append(ConfigProblem(f"prompts.{key}", f"a template must parse ({exc})", template,
                                          "{dialogue} and doubled braces {{ }} for literal ones",
                                          "close the brace, or double literal braces ({{ and }})"))
            continue
        if found != {PROMPT_PLACEHOLDER}:
            problems.append(ConfigProblem(
                f"prompts.{key}", "a template must contain {dialogue} and no other placeholder", template,
                "exactly one placeholder, {dialogue}",
                _placeholder_fix(template, found) if found - {PROMPT_PLACEHOLDER}
                else "add {dialogue} where the dialogue goes"))
    swept = "prompt" in spec.search.grid or "prompt" in spec.search.space
    if spec.prompt is not None and spec.prompt not in spec.prompts:
        problems.append(ConfigProblem("prompt", "must name one of the templates", spec.prompt,
                                      ", ".join(spec.prompts), schema.did_you_mean(spec.prompt, spec.prompts)))
    elif spec.prompt is None and not swept and len(spec.prompts) > 1:
        problems.append(ConfigProblem("prompt", "with several templates, pick one or sweep them", None,
                                      ", ".join(spec.prompts),
                                      "set prompt: <name>, or sweep prompt in search.grid (search.space for optuna)"))
    return problems


def _grid_problems(spec: SweepSpec) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for key, values in spec.search.grid.items():
        path = f"search.grid.{key}"
        if swept_key_problem(key, path, problems):
            continue
        if not values:
            problems.append(ConfigProblem(path, "a grid axis needs at least one value", values, "a non-empty list",
                                          f"list one or more values, or remove {path}"))
        _value_problems(spec, key, values, path, problems)
    return problems


def swept_key_problem(key: str, path: str, problems: list[ConfigProblem]) -> bool:
    allowed = [p for p in schema.leaf_paths(TrialConfig) if p not in _DERIVED]
    if key in allowed:
        return False
    problems.append(ConfigProblem(path, "a swept key must be a trial setting", key,
                                  "prompt, lora.rank, training.learning_rate, ... (dotted paths)",
                                  schema.did_you_mean(key, allowed)))
    return True


def _value_problems(spec: SweepSpec, key: str, values: list, path: str, problems: list[ConfigProblem]) -> None:
    seen: list[tuple[int, Any]] = []
    for i, value in enumerate(values):
        converted = schema.check_value(TrialConfig, key, value, f"{path}[{i}]", problems)
        if key == "prompt" and value not in spec.prompts:
            problems.append(ConfigProblem(f"{path}[{i}]", "must name one of the templates", value,
                                          ", ".join(spec.prompts), schema.did_you_mean(str(value), spec.prompts)))
        same = next((j for j, other in seen if other == converted), None)
        if same is not None and not schema.is_missing(converted):
            problems.append(ConfigProblem(f"{path}[{i}]", "values of one axis must differ (equal ones would be the "
                                          "same run twice)", value, f"anything but {values[same]!r} (item {same})",
                                          f"remove item {i}"))
        seen.append((i, converted))


def _study_problems(spec: SweepSpec) -> list[ConfigProblem]:
    search, problems = spec.search, []
    used = _READS[search.type]
    for unused in sorted(set(_READS.values()) - {used}):
        if getattr(search, unused):
            problems.append(ConfigProblem(f"search.{unused}", f"a {search.type} search reads search.{used} only",
                                          sorted(getattr(search, unused)), f"search.{used}",
                                          f"move the keys to search.{used}, or set search.type"))
    if search.study is None:
        return problems
    if not search.space:
        problems.append(ConfigProblem("search.space", "an optuna search needs at least one dimension", {},
                                      "dotted trial keys with choices or low/high",
                                      "e.g. training.learning_rate: {low: 1e-4, high: 1e-3, log: true}"))
    for key, dim in search.space.items():
        path = f"search.space.{key}"
        if not swept_key_problem(key, path, problems):
            problems += _dimension_problems(spec, key, dim, path)
    return problems + _objective_problems(spec)


def _dimension_problems(spec: SweepSpec, key: str, dim: Dimension, path: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    ranged = dim.low is not None or dim.high is not None
    if (dim.choices is not None) == ranged or (ranged and (dim.low is None or dim.high is None)):
        return [ConfigProblem(path, "a dimension is either `choices` or a range with both `low` and `high`",
                              dataclasses.asdict(dim), "{choices: [...]} or {low: L, high: H, log: bool}",
                              "keep either choices or low and high")]
    if dim.choices is not None:
        if not dim.choices:
            problems.append(ConfigProblem(f"{path}.choices", "needs at least one value", [], "a non-empty list",
                                          f"list one or more values, or remove {path}"))
        _value_problems(spec, key, dim.choices, f"{path}.choices", problems)
        if dim.log or dim.step is not None:
            problems.append(ConfigProblem(path, "log and step apply to ranges only", dataclasses.asdict(dim),
                                          "choices alone", "remove log/step"))
        return problems
    for end in ("low", "high"):
        schema.check_value(TrialConfig, key, _integral(getattr(dim, end)), f"{path}.{end}", problems)
    if dim.step is not None and schema.is_integer_setting(TrialConfig, key) and not float(dim.step).is_integer():
        problems.append(ConfigProblem(f"{path}.step", f"{key} is an integer setting, so its step must be whole",
                                      dim.step, "a whole number such as 1 or 4", f"step: {max(round(dim.step), 1)}"))
    if dim.low >= dim.high:
        problems.append(ConfigProblem(path, "low must be below high", [dim.low, dim.high], "low < high",
                                      f"swap them: low: {dim.high}, high: {dim.low}"))
    if dim.log and dim.low <= 0:
        problems.append(ConfigProblem(f"{path}.low", "a log range must be positive", dim.low, "> 0",
                                      "raise low above 0 (e.g. 1e-5), or set log: false"))
    if dim.log and dim.step is not None:
        problems.append(ConfigProblem(f"{path}.step", "Optuna cannot step a log range", dim.step,
                                      "step: null with log: true", "remove step, or set log: false"))
    if spec.search.optuna.sampler == "grid":
        problems.append(ConfigProblem(path, "the grid sampler needs `choices` on every dimension",
                                      dataclasses.asdict(dim), "{choices: [...]}", "list the values, or use tpe"))
    return problems


def _integral(value: float) -> Any:
    """Range ends arrive as floats; an integer setting (lora.rank) is checked with their integer value."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _objective_problems(spec: SweepSpec) -> list[ConfigProblem]:
    settings, problems = spec.search.optuna, []
    if not settings.objectives:
        problems.append(ConfigProblem("search.optuna.objectives", "a study needs an objective", [],
                                      "one or more {metric, direction}",
                                      "add objectives: [{metric: rougeL, direction: maximize}]"))
    for i, objective in enumerate(settings.objectives):
        known = metric(objective.metric)
        if objective.metric not in OBJECTIVES:
            problems.append(ConfigProblem(f"search.optuna.objectives[{i}].metric", "must be a final trial metric",
                                          objective.metric, ", ".join(OBJECTIVES),
                                          schema.did_you_mean(objective.metric, OBJECTIVES)))
        elif not known.either_direction and objective.direction != known.direction:
            better = "lower" if known.lower_is_better else "higher"
            problems.append(ConfigProblem(f"search.optuna.objectives[{i}].direction",
                                          f"{objective.metric} is better {better}: a study must {known.direction} it",
                                          objective.direction, known.direction, f"direction: {known.direction}"))
        elif objective.metric in BERTSCORE_METRICS and spec.scoring.bertscore_model is None:
            problems.append(ConfigProblem(f"search.optuna.objectives[{i}].metric", "BERTScore is computed only with "
                                          "scoring.bertscore_model set", objective.metric, "a ROUGE metric, or set "
                                          "scoring.bertscore_model", "set scoring.bertscore_model: <local encoder>"))
    if settings.pruner == "none":
        return problems
    if len(settings.objectives) > 1:
        problems.append(ConfigProblem("search.optuna.pruner", "Optuna prunes single-objective studies only",
                                      settings.pruner, "none with several objectives",
                                      "set pruner: none, or keep one objective"))
    swept = sorted(k for k in spec.search.space if k in _EVAL_SET_KEYS)
    if settings.pruner == "wilcoxon" and swept:
        problems.append(ConfigProblem("search.optuna.pruner", "the Wilcoxon pruner pairs per-example scores, so every "
                                      "trial must score the same eval examples", swept,
                                      "a space without the keys that pick eval examples",
                                      "fix those keys in the spec, or use pruner: median"))
    t = spec.training
    if not 0 < t.eval_interval_steps < (t.max_steps or math.inf):  # an epoch budget's steps: at the trial
        problems.append(ConfigProblem("training.eval_interval_steps", "a pruner decides on interim evaluations, "
                                      "so they must happen before the last step", t.eval_interval_steps,
                                      f"1 to {t.max_steps - 1}" if t.max_steps else ">= 1, below the trial's steps",
                                      f"e.g. eval_interval_steps: {max((t.max_steps or 32) // 4, 1)}"))
    return problems


def _model_problems(spec: SweepSpec) -> list[ConfigProblem]:
    names = _given(spec, "model.name", spec.model.name)
    if spec.augmentation.paraphrase_model:
        names.append(("augmentation.paraphrase_model", spec.augmentation.paraphrase_model))
    problems = []
    for path, name in names:
        reason = model_problem(str(name))
        if reason:
            problems.append(ConfigProblem(path, "the model must be loadable", name,
                                          "smollm2-135m-instruct, a local model directory, or a hub id", reason))
    return problems


def _output_problems(output: OutputConfig) -> list[ConfigProblem]:
    from sqlalchemy.engine import make_url

    from orchestrator.trackers.mlflow_view import mlflow_missing

    missing = mlflow_missing() if output.mlflow_tracking_uri else None
    if missing:
        return [ConfigProblem("output.mlflow_tracking_uri", "an MLflow view needs MLflow", output.mlflow_tracking_uri,
                              "null, or a tracking URI with mlflow installed", missing.split("Fix: ")[1])]

    try:
        url = make_url(output.store_url())
    except Exception as exc:  # sqlalchemy raises ArgumentError and others for malformed URLs
        return [ConfigProblem("output.store", "must be a SQLAlchemy URL", output.store,
                              "e.g. sqlite:///runs/results.db or postgresql://user@host/db",
                              f"write it as dialect://user@host/db or sqlite:///path ({exc})")]
    try:
        url.get_dialect().import_dbapi()
    except Exception as exc:  # an unknown dialect, or its driver not installed
        return [ConfigProblem("output.store", "the store's database driver must be installed", output.store,
                              "sqlite:///..., or postgresql://user@host/db with psycopg installed",
                              "pip install 'qlora-sweep[postgres]' for PostgreSQL (psycopg); "
                              f"{type(exc).__name__}: {exc}")]
    return []


def _placeholder_fix(template: str, found: set[str]) -> str:
    """An action: each unknown placeholder rewritten as {dialogue}, or its braces doubled to be literal text."""
    unknown = sorted(found - {PROMPT_PLACEHOLDER})
    rewritten = template
    for name in unknown:
        rewritten = rewritten.replace("{" + name + "}", "{" + PROMPT_PLACEHOLDER + "}")
    if PROMPT_PLACEHOLDER in found:  # {dialogue} is there already: the others were meant as literal text
        return "write " + ", ".join("{{" + n + "}}" for n in unknown) + " for literal braces, or remove " + \
            ", ".join("{" + n + "}" for n in unknown)
    return f"replace {unknown} with {{{PROMPT_PLACEHOLDER}}}: {rewritten!r}"
