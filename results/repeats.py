"""Seeds as repeats: the trials of one config run over a `training.seed` grid axis, grouped, with the mean,
the standard deviation across seeds and n of each metric; configs rank by the mean. A difference between
two configs that is small next to their standard deviations is seed noise, not a finding."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from statistics import fmean, stdev

from evaluation.metrics import metric as registered, metrics_where
from results.provenance import scoring_letters
from results.store import TrialSummary

REPEAT_KEY = "training.seed"


@dataclass(frozen=True)
class RepeatGroup:
    config: str
    """The trials' name without its seed part: `v1-r8-lr5e-4`."""
    kind: str
    params: dict
    """The swept values the repeats share (the seed left out)."""
    trials: tuple[str, ...]
    """Completed repeats with the ranking metric, in seed order."""
    seeds: tuple
    mean: dict[str, float]
    """Per metric, over the repeats, scaled as every view shows it (ROUGE x 100)."""
    std: dict[str, float | None]
    """Sample standard deviation across seeds (n - 1 in the denominator); None for a single repeat."""
    scoring: str = "A"
    """The scoring letter (results.provenance.scoring_letters): groups rank within one letter."""
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.trials)


def has_repeats(trials: list[TrialSummary]) -> bool:
    """Was the seed a swept key of this sweep?"""
    return any(REPEAT_KEY in t.params for t in trials)


def of_sweep(summary, metric: str) -> list[RepeatGroup]:
    """The sweep's repeat groups when it swept the seed, else []; rows scored differently never share one."""
    return group_repeats(summary.trials, metric, scoring_letters(summary.trials)) if has_repeats(summary.trials) else []


def group_repeats(trials: list[TrialSummary], metric: str, letters: dict[str, str] | None = None) -> list[RepeatGroup]:
    """One group per config (its swept values but the seed, and its scoring letter), ranked by the mean of
    `metric`, best first; a baseline (one per zero-shot setting, seeds share it) is a group of one."""
    ranking = registered(metric)
    members: dict[tuple, list[TrialSummary]] = {}
    for t in trials:
        if t.status == "completed" and metric in t.metrics:
            shared = tuple(sorted((k, repr(v)) for k, v in t.params.items() if k != REPEAT_KEY))
            members.setdefault((t.kind, shared, (letters or {}).get(t.name, "A")), []).append(t)
    groups = [_group(sorted(ts, key=lambda t: t.params.get(REPEAT_KEY, 0)), letter)
              for (_, _, letter), ts in members.items()]
    groups.sort(key=lambda g: (g.scoring, ranking.best_first(g.mean[metric])))
    firsts = {g.scoring: g for g in reversed(groups)}  # the best of each scoring letter
    return [replace(g, best=firsts[g.scoring] is g) for g in groups]


def _group(trials: list[TrialSummary], letter: str) -> RepeatGroup:
    first = trials[0]
    names = [k.name for k in metrics_where(repeat=True) if all(k.name in t.metrics for t in trials)]
    values = {k: [registered(k).scale * t.metrics[k] for t in trials] for k in names}
    return RepeatGroup(config_label(first), first.kind, {k: v for k, v in first.params.items() if k != REPEAT_KEY},
                       tuple(t.name for t in trials), tuple(t.params.get(REPEAT_KEY) for t in trials),
                       {k: fmean(v) for k, v in values.items()},
                       {k: stdev(v) if len(v) > 1 else None for k, v in values.items()}, letter)


def config_label(trial: TrialSummary) -> str:
    """The name with its seed part (`seed3`, as the planner labels the axis) taken out."""
    seed = trial.params.get(REPEAT_KEY)
    if seed is None:
        return trial.name
    return re.sub(rf"(^|-)seed{re.escape(str(seed))}(?=-|$)", "", trial.name).strip("-") or trial.name
