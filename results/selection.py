"""`--where key=value`: the trials of a sweep that a leaderboard or report shows.

A key is a swept setting as the trial records it (`prompt`, `lora.rank`, `training.learning_rate`, ...),
or `kind`, `status`, `name`. Several filters must all hold. A fine-tune that is kept keeps its own zero-shot
baseline, so `vs 0-shot` still has something to compare with.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import yaml

from results.store import SweepSummary, TrialSummary

_FIELDS = ("kind", "status", "name")


class SelectionError(ValueError):
    """A --where that is malformed or names a key no trial has."""


def select(summary: SweepSummary, wheres: list[str]) -> SweepSummary:
    """`summary` with only the trials every `key=value` in `wheres` matches (and their baselines)."""
    if not wheres:
        return summary
    filters = [_parse(w, summary.trials) for w in wheres]
    kept = [t for t in summary.trials if all(_matches(t, key, value) for key, value in filters)]
    fine_tunes = [t for t in kept if t.kind == "trial"]
    baselines = [b for b in summary.trials if b.kind == "baseline" and b not in kept
                 and any(_is_baseline_of(b, t) for t in fine_tunes)]
    return dataclasses.replace(summary, trials=[t for t in summary.trials if t in kept or t in baselines])


def _is_baseline_of(baseline: TrialSummary, trial: TrialSummary) -> bool:
    """Its recorded baseline; in stores from before that was recorded, the baseline whose settings it shares."""
    if trial.baseline:
        return trial.baseline == baseline.name
    return all(trial.params.get(k) == v for k, v in baseline.params.items())


def _parse(where: str, trials: list[TrialSummary]) -> tuple[str, object]:
    key, sep, text = where.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SelectionError(f"--where: a filter is key=value; given {where!r}; e.g. --where prompt=v2")
    keys = sorted(set(_FIELDS) | {k for t in trials for k in t.params})
    if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1)
        raise SelectionError(f"--where {where}: the key must be a swept setting or {', '.join(_FIELDS)}; given "
                             f"{key!r}; allowed: {', '.join(keys)}"
                             + (f". Fix: did you mean {close[0]!r}?" if close else ""))
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError:
        return key, text


def _matches(trial: TrialSummary, key: str, value: object) -> bool:
    have = getattr(trial, key) if key in _FIELDS else trial.params.get(key, _Missing)
    if have is _Missing:
        return False
    numbers = [_number(v) for v in (have, value)]
    if None not in numbers:
        return math.isclose(numbers[0], numbers[1], rel_tol=1e-9)
    return str(have) == str(value)


class _Missing:
    pass


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # "2e-4" from the command line equals 0.0002 in the store
    except (TypeError, ValueError):
        return None
