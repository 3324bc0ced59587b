"""Optuna studies: the sampler proposes trial settings, the driver runs them and tells the study.

The study lives in Optuna's own RDB storage (by default the results store's database, so one file
holds both and `optuna-dashboard <url>` opens it). Only the sweep driver talks to it. Each study
trial carries the store row it became (user attribute `sweep_trial`) and each row its study trial
number, so the two agree trial by trial.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as StudyState

from orchestrator.planning.plan import PlannedTrial, planned_trial, typed_value
from sweeps.schema import is_integer_setting
from sweeps.spec import Dimension, OptunaSettings, SweepSpec
from results.states import TrialState
from trainer.config import TrialConfig

# A trial's end -> its study trial's state; `interrupted` leaves the study trial RUNNING, so the next
# `sweep run` re-runs it under the same number.
_STATES = {TrialState.COMPLETED: StudyState.COMPLETE, TrialState.PRUNED: StudyState.PRUNED,
           TrialState.FAILED: StudyState.FAIL}
SWEEP_TRIAL_ATTR = "sweep_trial"


class StudyMismatch(Exception):
    """The stored study cannot continue under this spec (its objectives changed)."""


def check_stored_study(spec: SweepSpec, storage_url: str) -> None:
    """Raise StudyMismatch when a study of this name exists with other objective directions."""
    settings = spec.search.optuna
    name, url = settings.target(spec.name, storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints its own progress
    if name not in optuna.get_all_study_names(url):
        return
    stored = [d.name.lower() for d in optuna.load_study(study_name=name, storage=url).directions]
    wanted = [o.direction for o in settings.objectives]
    if stored != wanted:
        raise StudyMismatch(f"a resumed study must keep its objective directions; study {name!r} in {url} has "
                            f"{stored}, the spec asks for {wanted}. Fix: set search.optuna.study_name to a new "
                            "name (or rename the sweep) to start a new study")


class Study:
    def __init__(self, spec: SweepSpec, storage_url: str):
        settings = spec.search.optuna
        check_stored_study(spec, storage_url)
        self.spec, self.settings = spec, settings
        self.distributions = distributions(spec.search.space)
        name, url = settings.target(spec.name, storage_url)
        self.study = optuna.create_study(
            study_name=name, storage=url,
            load_if_exists=True, directions=[o.direction for o in settings.objectives],
            sampler=_sampler(settings, self.distributions), pruner=_pruner(settings, spec.training.eval_interval_steps))
        # RUNNING trials here belong to a driver that was killed or interrupted: run them again first.
        self._orphans = [t.number for t in self.study.get_trials(deepcopy=False, states=(StudyState.RUNNING,))]
        self._live: dict[int, optuna.trial.Trial] = {}

    @property
    def pruning(self) -> bool:
        return self.settings.pruner != "none"

    def ask(self) -> PlannedTrial | None:
        """The next trial to run, or None once the study holds `n_trials` trials."""
        if self._orphans:
            trial = self._reopen(self._orphans.pop(0))
        elif len(self.study.get_trials(deepcopy=False)) >= self._budget():
            return None
        else:
            trial = self.study.ask(self.distributions)
        self._live[trial.number] = trial
        planned = planned_trial(self.spec, _in_space_order(trial.params, self.distributions), trial.number)
        trial.set_user_attr(SWEEP_TRIAL_ATTR, planned.name)
        return planned

    def report(self, number: int, step: int, value: float) -> bool:
        """Record an interim value of the objective; True when the pruner says stop this trial."""
        trial = self._live.get(number)
        if trial is None or not self.pruning:
            return False
        trial.report(value, step)
        return trial.should_prune()

    @property
    def per_example(self) -> bool:
        """The pruner reads per-example scores (Wilcoxon) rather than an interim mean."""
        return self.settings.pruner == "wilcoxon"

    def report_examples(self, number: int, step: int, values: list[float]) -> bool:
        """Record one interim eval's per-example scores (the same examples, in the same order, for every trial);
        True when the pruner says stop. Optuna's instance id is `step * len(values) + i`: each (training step,
        example) pair once, so a trial is paired with the best one at the same point of training."""
        trial = self._live.get(number)
        if trial is None or not self.pruning:
            return False
        for i, value in enumerate(values):
            trial.report(value, step * len(values) + i)
        return trial.should_prune()

    def tell(self, number: int, status: TrialState, metrics: dict[str, float]) -> None:
        """End the study trial as its store row ended (`interrupted` leaves it RUNNING for the next run)."""
        live = self._live.pop(number, None)
        status = TrialState(status)
        if status is TrialState.INTERRUPTED:
            if live is not None:  # this driver asked for it (or reopened it): a user attribute says why it runs on
                live.set_user_attr("interrupted", True)
            return
        if status is TrialState.COMPLETED:
            values = [metrics[o.metric] for o in self.settings.objectives]
            self.study.tell(number, values, skip_if_finished=True)
        else:
            self.study.tell(number, state=_STATES[status], skip_if_finished=True)

    def _budget(self) -> int:
        if self.settings.sampler == "grid":  # a grid sampler has nothing new to propose past its size
            return min(self.settings.n_trials, math.prod(len(d.choices) for d in self.distributions.values()))
        return self.settings.n_trials

    def _reopen(self, number: int) -> optuna.trial.Trial:
        """The live handle of a RUNNING study trial a dead driver left, to report to and tell under its own number.
        Optuna has no public call for this: `study.ask()` only makes new trials, and `enqueue_trial` would give
        the rerun a new number (and so a new store row and name). A `Trial` is built from its storage id, as
        Optuna's own `ask` does; `tell` takes the number, which is public."""
        return optuna.trial.Trial(self.study, self._trial_id(number))

    def _trial_id(self, number: int) -> int:
        return self.study.trials[number]._trial_id  # the storage id behind a number; see _reopen


def distributions(space: dict[str, Dimension]) -> dict[str, BaseDistribution]:
    """Optuna distributions of a spec's space: integer settings (lora.rank) get integer ranges."""
    out: dict[str, BaseDistribution] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            out[key] = CategoricalDistribution([typed_value(key, v) for v in dim.choices])
        elif key != "prompt" and is_integer_setting(TrialConfig, key):  # lora.alpha too, whose default is null
            out[key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
        else:
            out[key] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return out


def _in_space_order(params: dict[str, Any], space: dict[str, BaseDistribution]) -> dict[str, Any]:
    return {key: params[key] for key in space if key in params}


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: its `after_trial` calls `study.stop()` once the grid is used up,
    which raises outside `study.optimize`. The driver stops asking at the grid's size instead (Study._budget)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def _sampler(settings: OptunaSettings, space: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    if settings.sampler == "grid":
        return _AskTellGridSampler({k: d.choices for k, d in space.items()}, seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    with warnings.catch_warnings():  # constant_liar is "experimental": its API, not its behaviour
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Trials run side by side (several workers, several trials per pack): a running trial counts as a bad
        # result while TPE proposes the next, so proposals asked together do not crowd one point.
        return optuna.samplers.TPESampler(seed=settings.seed, constant_liar=True)


def _pruner(settings: OptunaSettings, eval_interval_steps: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_interval_steps,
                                                      reduction_factor=settings.reduction_factor)
    if settings.pruner == "wilcoxon":
        with warnings.catch_warnings():  # "experimental": its API, not its test
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=settings.p_threshold,
                                                 n_startup_steps=settings.n_startup_steps)
    return optuna.pruners.NopPruner()

