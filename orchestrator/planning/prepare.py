"""Before a sweep starts: every model converted, every dataset loaded (paraphrases made), every prompt's
token budget and every epoch budget checked. Anything that fails here stops the sweep before Ray starts or
the store is written.
"""

from __future__ import annotations

import dataclasses
import sys

from evaluation.rouge import resolve_tokenizer
from orchestrator.planning.budget import budget_problems
from orchestrator.planning.datachecks import data_problems
from orchestrator.planning.plan import PlannedTrial
from orchestrator.search.strategies import search_for
from sweeps.spec import SpecError, SweepSpec
from trainer import paraphrase
from trainer.augment import training_examples
from trainer.config import AugmentationConfig, ConfigProblem
from trainer.data import DATA_DIR_ENV, TrialData, load_trial_data, normalised, split_source
from trainer.models import cache_root, model_identity, resolve_model_path


class PrepareError(Exception):
    """A model or dataset could not be made ready; raised before Ray starts or the store is written."""


def prepare(spec: SweepSpec) -> tuple[list[PlannedTrial], dict[str, TrialData]]:
    """The plan, each distinct dataset loaded once and each distinct model converted once; every run's
    prompt checked against its token budget with the model's real tokenizer (SpecError if one fails)."""
    search = search_for(spec)
    plan, targets = search.planned(), search.checked()
    for name in sorted(search.models()):
        try:
            resolve_model_path(name)
        except Exception as exc:  # conversion or download: any failure means the sweep cannot start
            raise PrepareError(f"model.name {name!r} could not be prepared: {type(exc).__name__}: {exc}") from exc
    try:
        problems = budget_problems([t.config for t in targets], [t.name for t in targets])
    except Exception as exc:  # a hub tokenizer offline, a broken local folder: the trials could not load it either
        raise PrepareError(f"the prompts' token budgets could not be checked, because a tokenizer did not load: "
                           f"{type(exc).__name__}: {exc}") from exc
    datasets = list(dict.fromkeys(t.config.dataset for t in targets))  # every row of every file, once
    problems += [p for cfg in datasets for p in data_problems(cfg)]
    if problems:
        raise SpecError(spec.name, problems)
    data: dict[str, TrialData] = {}
    # The largest paraphrase share first: a smaller share's rows are a subset, then read from the cache.
    for trial in sorted(targets, key=lambda t: -t.config.augmentation.paraphrase):
        key = data_key(trial)
        if key not in data:
            data[key] = load_data(trial)
    problems = [p for t in targets for p in _epoch_problems(t, data[data_key(t)])]
    if problems:
        raise SpecError(spec.name, problems)
    return plan, data


def _epoch_problems(trial: PlannedTrial, data: TrialData) -> list[ConfigProblem]:
    """An epoch budget's step checks on the most rows the trial can have (rows too long for it only shorten
    it; the trial checks its own count again)."""
    t = trial.config.training
    if t.epochs is None or trial.config.zero_shot:
        return []
    rows = len(training_examples(data, trial.config.augmentation))
    return t.step_problems("training", t.total_steps(rows), f" (at {trial.name}: {rows} training rows at most)")


def load_data(trial: PlannedTrial) -> TrialData:
    cfg = trial.config.dataset
    try:
        data = load_trial_data(cfg)
    except Exception as exc:  # file, hub or parsing errors alike stop the sweep before it starts
        sources = " and ".join(split_source(cfg, which).describe() for which in ("train", "eval"))
        raise PrepareError(f"dataset could not be loaded from {sources}: {type(exc).__name__}: {exc}. "
                           f"Fix: point {DATA_DIR_ENV} or dataset.mirror_dir at a local mirror, or use "
                           "dataset.train_file/eval_file") from exc
    if not data.train or not data.eval:
        raise PrepareError(f"dataset has {len(data.train)} training and {len(data.eval)} eval rows; both must be > 0")
    try:
        resolve_tokenizer(trial.config.scoring.tokenizer, [r for e in data.eval for r in e.references])
    except ValueError as exc:
        raise PrepareError(f"scoring.tokenizer: {exc}") from exc
    return _with_paraphrases(data, trial.config.augmentation) if trial.config.augmentation.paraphrase else data


def _with_paraphrases(data: TrialData, aug: AugmentationConfig) -> TrialData:
    """`data` with its paraphrased training rows, generated here (once, before any trial) or read from the cache."""
    try:
        path = resolve_model_path(aug.paraphrase_model)
        made_by = paraphrase.provenance(aug, model_identity(aug.paraphrase_model))
        cache = paraphrase.ParaphraseCache(cache_root(), made_by)
        rows, generated = paraphrase.paraphrased_examples(data.train, aug, cache,
                                                          lambda: paraphrase.load_generator(path, aug))
    except Exception as exc:  # a missing or broken generator stops the sweep before it starts
        raise PrepareError(f"augmentation.paraphrase_model: paraphrases could not be made with "
                           f"{aug.paraphrase_model!r}: {type(exc).__name__}: {exc}") from exc
    print(f"paraphrase: {len(rows)} training rows, {generated} generated now, the rest from {cache.path}",
          file=sys.stderr, flush=True)
    return dataclasses.replace(data, paraphrased=rows, paraphrase_source=paraphrase.describe(aug, cache))


def sweep_notes(data: dict[str, TrialData], spec: SweepSpec) -> dict:
    """The leaderboard header's lines about the data: rows used (and asked, where a file had fewer), skipped
    rows, eval rows that are also training rows (allowed by dataset.eval_overlap), paraphrases."""
    first_key = next(iter(data))
    first = data[first_key]
    cfg = next(t.config.dataset for t in search_for(spec).checked() if data_key(t) == first_key)
    notes = {"eval_examples": _used(len(first.eval), cfg.eval_examples),
             "train_examples": _used(len(first.train), cfg.train_examples),
             "reference_columns": ", ".join(first.reference_columns)}
    if any(first.skipped_rows):
        notes["skipped_rows"] = (f"{first.skipped_rows[0]} train, {first.skipped_rows[1]} eval "
                                 "(empty or missing dialogue or summary)")
    if cfg.eval_overlap == "allow":
        trained = {normalised(e.dialogue) for e in first.train}
        overlap = sum(normalised(e.dialogue) in trained for e in first.eval)
        notes["eval_overlap"] = (f"allowed (dataset.eval_overlap): {overlap} of {len(first.eval)} scored eval rows "
                                 "are also training rows")
    sources = sorted({d.paraphrase_source for d in data.values() if d.paraphrase_source})
    if sources:
        notes["paraphrase"] = "; ".join(sources)
    return notes


def _used(used: int, asked: int) -> int | str:
    return used if used >= asked else f"{used} (all usable rows; {asked} asked)"


def data_key(trial: PlannedTrial) -> str:
    """One TrialData per dataset, and per paraphrase setting (each holds the paraphrased rows it needs)."""
    aug = trial.config.augmentation
    made_by = (aug.paraphrase, aug.paraphrase_model, aug.paraphrase_prompt, aug.seed) if aug.paraphrase else None
    return repr((trial.config.dataset, made_by))
