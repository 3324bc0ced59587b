"""What a sweep runs: one `Search` per `search.type`, the only place that tells a grid from a study.

A search plans the trials known before the sweep starts, names the representative point whose invariants and
token budget are checked up front, proposes more while the sweep runs, and is told how each of its trials
ended. The driver, the CLI and the loader talk to this interface alone. A new kind of search is a subclass
here and one entry in `_SEARCHES` (plus its `search.type` literal in sweeps.spec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.planning.plan import (PlannedTrial, baselines_of, grid_plan, plan_problems, planned_trial,
                                        with_baseline)
from sweeps.spec import Dimension, SweepSpec
from results.states import TrialState
from trainer import events as ev
from trainer.config import ConfigProblem
from trainer.identity import affects_baseline

if TYPE_CHECKING:
    from orchestrator.search.study import Study


class Search:
    """A grid's behaviour is the default: everything is planned, nothing is proposed, telling changes nothing."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def planned(self) -> list[PlannedTrial]:
        """The trials known before the sweep runs: fine-tunes in grid order, then their zero-shot baselines."""
        trials = grid_plan(self.spec, self.spec.search.grid)
        baselines = baselines_of(self.spec, trials)
        return [with_baseline(t, baselines) for t in trials] + baselines

    def checked(self) -> list[PlannedTrial]:
        """Trials whose invariants, token budgets and data are checked before anything runs."""
        return self.planned()

    def models(self) -> set[str]:
        """Every model a trial of this search can load (each is converted before the sweep starts)."""
        return {t.config.model.name for t in self.checked()}

    @property
    def proposals(self) -> int:
        """Trials it proposes while the sweep runs, on top of the planned ones."""
        return 0

    def describe(self) -> str:
        """One line after the planned runs in `sweep plan`; empty for a grid."""
        return ""

    def check_stored(self, store_url: str) -> None:
        """Raise when what the store holds for this search cannot continue under this spec."""

    def open(self, store_url: str) -> None:
        """Start proposing (a study loads or creates its Optuna study)."""

    def ask(self) -> PlannedTrial | None:
        """The next trial to run, or None when it has nothing more to propose."""
        return None

    def prune_reason(self, trial: PlannedTrial, event: ev.Metric | ev.Scores) -> str | None:
        """Why `trial` should stop after this interim evaluation (its mean, or its per-example scores), or None."""
        return None

    def tell(self, trial: PlannedTrial, state: TrialState, metrics: dict[str, float]) -> None:
        """`trial` ended in `state` (with its final `metrics` when it completed or was reused)."""


class StudySearch(Search):
    """An Optuna study over `search.space`: only baselines are planned; the study proposes the fine-tunes."""

    def __init__(self, spec: SweepSpec):
        super().__init__(spec)
        self.study: Study | None = None

    def planned(self) -> list[PlannedTrial]:
        """One baseline per categorical value of the keys that change what a zero-shot run computes."""
        raw = {k: d.choices for k, d in self.spec.search.space.items()
               if d.choices is not None and affects_baseline(k)}
        return baselines_of(self.spec, grid_plan(self.spec, raw))

    def checked(self) -> list[PlannedTrial]:
        # Proposals are checked as the study makes them; the spec's own point stands for them up front.
        return self.planned() + [planned_trial(self.spec, {})]

    def models(self) -> set[str]:
        return super().models() | set(_choices(self.spec.search.space.get("model.name")))

    @property
    def proposals(self) -> int:
        return self.spec.search.optuna.n_trials

    def describe(self) -> str:
        s = self.spec.search.optuna
        return (f"+ {s.n_trials} study trials ({s.sampler} sampler, pruner {s.pruner}) over: "
                + "; ".join(f"{k} {_dimension(d)}" for k, d in self.spec.search.space.items()))

    def check_stored(self, store_url: str) -> None:
        from orchestrator.search.study import check_stored_study

        check_stored_study(self.spec, store_url)

    def open(self, store_url: str) -> None:
        from orchestrator.search.study import Study

        self.study = Study(self.spec, store_url)
        self._baselines = [t for t in self.planned() if t.kind == "baseline"]

    def ask(self) -> PlannedTrial | None:
        proposed = self.study.ask()
        return None if proposed is None else with_baseline(proposed, self._baselines)

    def prune_reason(self, trial: PlannedTrial, event: ev.Metric | ev.Scores) -> str | None:
        metric, study = self.spec.search.optuna.objectives[0].metric, self.study
        per_example = isinstance(event, ev.Scores)
        if trial.study_trial is None or event.name != f"eval/{metric}" or per_example != study.per_example:
            return None  # the Wilcoxon pruner reads the per-example scores, the others the mean
        if per_example:
            pruned = study.report_examples(trial.study_trial, event.step, list(event.values))
            shown = f"mean {sum(event.values) / len(event.values):.4f} over {len(event.values)} examples"
        else:
            pruned, shown = study.report(trial.study_trial, event.step, event.value), f"{event.value:.4f}"
        return f"pruned by the {study.settings.pruner} pruner at step {event.step}: eval/{metric}={shown}" if pruned else None

    def tell(self, trial: PlannedTrial, state: TrialState, metrics: dict[str, float]) -> None:
        if trial.study_trial is not None:
            self.study.tell(trial.study_trial, state, metrics)


_SEARCHES: dict[str, type[Search]] = {"grid": Search, "optuna": StudySearch}


def search_for(spec: SweepSpec) -> Search:
    """The search a spec's `search.type` names."""
    return _SEARCHES[spec.search.type](spec)


def expand(spec: SweepSpec) -> list[PlannedTrial]:
    """The trials a spec plans before it runs (a study's baselines only; its proposals come while it runs)."""
    return search_for(spec).planned()


def point_problems(spec: SweepSpec) -> list[ConfigProblem]:
    """Every invariant of every run checked up front, and distinct names."""
    return plan_problems(search_for(spec).checked())


def _choices(dim: Dimension | None) -> list:
    return list(dim.choices or []) if dim is not None else []


def _dimension(d: Dimension) -> str:
    if d.choices is not None:
        return "in " + ", ".join(map(str, d.choices))
    return f"from {d.low:g} to {d.high:g}" + (" (log)" if d.log else "") + (f" step {d.step:g}" if d.step else "")
