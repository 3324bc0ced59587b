"""`sweep show SWEEP TRIAL`: one trial's settings, curves in brief, and its worst and best predictions
next to their references, from the store only."""

from __future__ import annotations

import textwrap

import yaml

from evaluation.metrics import metric as registered
from results import environment
from results.leaderboard import describe_scoring
from results.status import last_line
from results.store import TrialSummary

_WRAP = 100


def lineage(trial: TrialSummary, names: dict[int, str]) -> str | None:
    """How a trial added while the sweep ran came to be (`names`: row id -> trial name); None for a planned one."""
    if trial.origin is None:
        return None
    parent = names.get(trial.parent_id, f"row {trial.parent_id}")
    if trial.forked_at_step is None:
        return f"cloned from {parent}, cold (trained from step 0)"
    verb = "extended from" if trial.origin == "extend" else "cloned warm from"
    return (f"{verb} {parent} at its step {trial.forked_at_step}; the curve up to step {trial.forked_at_step} is "
            f"{parent}'s, inherited")


def render(trial: TrialSummary, config: dict, curves: list[tuple[str, int, float]], predictions: list[dict],
           metric: str, examples: int, names: dict[int, str] | None = None) -> str:
    lines = [f"trial {trial.name} ({trial.kind}): {trial.status}" + _runtime(trial),
             "params: " + ", ".join(f"{k}={v}" for k, v in trial.params.items())]
    origin = lineage(trial, names or {})
    if origin:
        lines.append("lineage: " + origin)
    if trial.error:
        lines.append("note: " + last_line(trial.error))
    if trial.scoring:
        lines.append("scoring: " + describe_scoring(trial.scoring))
    if trial.environment:
        lines.append("ran on: " + environment.describe(trial.environment))
    if trial.metrics:
        lines.append("final: " + "  ".join(f"{k} {registered(k).shown(v)}" for k, v in trial.metrics.items()))
    lines += ["", "curves (first -> last; best: min where lower is better, else max; points):"] + [f"  {line}" for line in curve_lines(curves)]
    for title, picked in worst_and_best(predictions, metric, examples):
        lines += _examples(f"{title} by {metric}", picked, metric)
    return "\n".join(lines + ["", "config:", textwrap.indent(yaml.safe_dump(config, sort_keys=False), "  ")])


def curve_series(curves: list[tuple[str, int, float]]) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> its (step, value) points in report order; the `final/` values are not a curve."""
    series: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in curves:
        if not name.startswith("final/"):
            series.setdefault(name, []).append((step, value))
    return series


def worst_and_best(predictions: list[dict], metric: str, examples: int) -> list[tuple[str, list[dict]]]:
    """[("worst N", rows), ("best N", rows)] by `metric` in its direction (a loss is worst at its highest);
    N is at most half the scored rows (rounded up)."""
    best_first = sorted((p for p in predictions if metric in p), key=lambda p: registered(metric).best_first(p[metric]))
    if not best_first:
        return []
    count = min(examples, (len(best_first) + 1) // 2)
    return [(f"worst {count}", best_first[::-1][:count]), (f"best {count}", best_first[:count])]


def curve_lines(curves: list[tuple[str, int, float]]) -> list[str]:
    """One line per curve: its first and last points, its best point (min where lower is better, else max)."""
    out = []
    for name, points in curve_series(curves).items():
        pick = min if registered(name.split("/")[-1]).lower_is_better else max
        step, value = pick(points, key=lambda p: p[1])
        out.append(f"{name}: {points[0][1]:.4g} (step {points[0][0]}) -> {points[-1][1]:.4g} (step {points[-1][0]}); "
                   f"{pick.__name__} {value:.4g} at step {step}; {len(points)} points")
    return out or ["none reported"]


def _examples(title: str, rows: list[dict], metric: str) -> list[str]:
    out = ["", f"{title}:"]
    for p in rows:
        out.append(f"  [{p['example_id']}] {metric} {registered(metric).shown(p[metric])}, {p['new_tokens']} tokens")
        out.append(_wrapped("prediction", p["prediction"]))
        out += [_wrapped(f"reference {i}", ref) for i, ref in enumerate(p["references"], 1)]
    return out


def _wrapped(label: str, text: str) -> str:
    return textwrap.fill(text.replace("\n", " / "), _WRAP, initial_indent=f"    {label}: ",
                         subsequent_indent=" " * (6 + len(label)))


def _runtime(t: TrialSummary) -> str:
    parts = [f"{t.runtime_s:.0f} s" if t.runtime_s is not None else None, t.worker and f"worker {t.worker}",
             f"{t.attempts} tries" if t.attempts > 1 else None]
    shown = ", ".join(p for p in parts if p)
    return f" ({shown})" if shown else ""

