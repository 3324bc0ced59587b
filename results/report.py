"""`sweep report SWEEP`: one self-contained HTML file (inline CSS and SVG, no script, no network).

It answers what a sweep is run for: the leaderboard; every trial's curves overlaid, one chart per metric; the
grid as a heatmap of the ranking metric; parallel coordinates and hyperparameter importance (Optuna's); the
ranking metric against generated length; then each trial's worst and best predictions. The charts are drawn
by matplotlib and Optuna (results.charts, results.importance). Every string from the store (model output above
all) is HTML-escaped; chart text is escaped by matplotlib's SVG writer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from html import escape

from evaluation.metrics import metric as registered, metrics_where
from results import charts, environment, importance, repeats
from results.leaderboard import (Row, describe_scoring, format_difference, format_interval,
                                 repeat_cells, scale, score_cell)
from results.show import curve_lines, curve_series, lineage, worst_and_best
from results.store import SweepSummary
from results.stored_spec import stored_spec

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;max-width:1250px;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ccc;padding:2px 4px;text-align:right}
td{white-space:nowrap}td.w{white-space:normal}td.l{white-space:normal;overflow-wrap:anywhere;text-align:left}
th{font-size:12px;vertical-align:bottom}th.l{text-align:left}
@media (max-width:1000px){table{font-size:11px}th{font-size:10px}td,th{padding:1px 2px}}
tr.best{background:#eef7ee}svg{max-width:100%;height:auto;display:block;margin:.4em 0}
.charts{display:flex;flex-wrap:wrap;column-gap:1.2em}.charts svg{width:590px}
.ex{border-left:3px solid #ccc;margin:.6em 0;padding:.2em .8em}.pred,.ref{white-space:pre-wrap;overflow-wrap:anywhere}
.ref{color:#555}h3{margin-top:1.6em}.note{color:#666;overflow-wrap:anywhere}"""


def render(summary: SweepSummary, rows: list[Row], metric: str, curves: dict[str, list[tuple[str, int, float]]],
           predictions: dict[str, list[dict]], groups: dict, examples: int = 3,
           storage_url: str | None = None) -> str:
    best = next((r.trial for r in rows if r.best), None)
    parts = [f"<h1>sweep {_e(summary.name)}</h1>", _notes(summary, groups), "<h2>Leaderboard</h2>",
             _board(rows, metric), *_repeats(summary, metric), "<h2>Curves</h2>", _curves(curves, best),
             *_grid(summary, rows, metric), *_mattered(summary, metric, storage_url),
             f"<h2>{_e(metric)} against generated length</h2>", _scatter(rows, metric), "<h2>Trials</h2>"]
    ran_on = {t.name: t.environment for t in summary.trials}
    names = {t.id: t.name for t in summary.trials}
    origins = {t.name: lineage(t, names) for t in summary.trials}
    for row in rows:
        parts.append(_trial(row, curves.get(row.trial, []), predictions.get(row.trial, []), metric, examples,
                            ran_on.get(row.trial), origins.get(row.trial)))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>sweep "
            + _e(summary.name) + f"</title><style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


def _e(value) -> str:
    return escape(str(value), quote=True)


def _notes(summary: SweepSummary, groups: dict) -> str:
    items = [f"<li>{_e(k)}: {_e(v)}</li>" for k, v in summary.notes.items()]
    for letter, how in sorted(groups.items()):
        items.append(f"<li>scoring {_e(letter)}: {_e(describe_scoring(how))}</li>")
    items += [f"<li>{_e(line)}</li>" for line in environment.sweep_lines(summary.trials)]
    return f"<ul class='note'>{''.join(items)}</ul>"


def _columns(metric: str) -> list[tuple[str, str, Callable[[Row], str]]]:
    """(header, cell class, cell text) per leaderboard column: the trial name wraps anywhere (`l`), intervals at
    their spaces (`w`), numbers never."""
    return [("trial", "l", lambda r: r.trial + (" (0-shot)" if r.kind == "baseline" else "")
             + ("" if r.status == "completed" else f" [{r.status}]")),
            *((k.page_label, "", score_cell(k)) for k in metrics_where() if k.page_label),
            (f"{registered(metric).label} 95% CI", "w", lambda r: format_interval(r.interval)),
            ("vs best", "w", lambda r: format_difference(r.vs_best)),
            ("vs 0-shot", "w", lambda r: format_difference(r.vs_baseline, r.delta)),
            ("scoring", "", lambda r: r.scoring)]


def _board(rows: list[Row], metric: str) -> str:
    """Fits the page: settings are in the trial names (and in each trial's section), provenance under the table."""
    columns = _columns(metric)
    ths = "".join(f"<th class='l'>{_e(head)}</th>" if css == "l" else f"<th>{_e(head)}</th>" for head, css, _ in columns)
    body = "".join(f"<tr class='{'best' if r.best else ''}'>"
                   + "".join(f"<td class='{css}'>{_e(cell(r))}</td>" for _, css, cell in columns) + "</tr>"
                   for r in rows)
    return (f"<table><tr>{ths}</tr>{body}</table><p class='note'>R1, R2, RL, RLsum: ROUGE in points (F1 x 100); "
            "! = the paired 95% interval excludes 0; the scoring letters are explained above.</p>")


def _repeats(summary: SweepSummary, metric: str) -> list[str]:
    """Configs repeated over a seed axis: mean, sd across seeds and n (results.repeats), best mean first."""
    groups = repeats.of_sweep(summary, metric)
    if not groups:
        return []
    head, cells = repeat_cells(groups, metric)
    ths = "".join(f"<th class='l'>{_e(h)}</th>" if h == "config" else f"<th>{_e(h)}</th>" for h in head)
    body = "".join(f"<tr class='{'best' if g.best else ''}'>" + "".join(
        f"<td class='l'>{_e(c)}</td>" if h == "config" else f"<td>{_e(c)}</td>" for h, c in zip(head, row)) + "</tr>"
        for g, row in zip(groups, cells))
    return [f"<h2>Repeats over training.seed: configs by the mean {_e(metric)}</h2>",
            f"<table><tr>{ths}</tr>{body}</table><p class='note'>means over the seeds; {_e(head[-1])}: the standard "
            "deviation across seeds (n - 1); n: completed repeats. A gap between configs smaller than their sds is "
            "seed noise.</p>"]


def _curves(curves: dict[str, list[tuple[str, int, float]]], best: str | None) -> str:
    """One chart per metric with every trial's curve on it: train loss, and each eval metric with interim points."""
    by_metric: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for trial, points in curves.items():
        for name, series in curve_series(points).items():
            if name == "train/loss" or (name.startswith("eval/") and len(series) > 1):
                by_metric.setdefault(name, {})[trial] = series
    if not by_metric:
        return "<p class='note'>no curves yet</p>"
    out = []
    for name in sorted(by_metric, key=lambda n: (n != "train/loss", n)):
        label = name.split("/", 1)[1]
        fig = charts.curves(by_metric[name], best, f"{name}: every trial", label)
        out.append(charts.to_svg(fig, name))
    note = ("<p class='note'>no interim evaluations (training.eval_interval_steps: 0): eval metrics are final "
            "only, see the leaderboard and the heatmap</p>") if list(by_metric) == ["train/loss"] else ""
    return f"<div class='charts'>{''.join(out)}</div>{note}"


def _grid(summary: SweepSummary, rows: list[Row], metric: str) -> list[str]:
    """A heatmap of the ranking metric over two swept keys, one panel per value of the others."""
    keys = list(stored_spec(summary).search.grid)  # a study's is empty: the spec check refuses grid keys there
    fine_tunes = [t for t in summary.trials if t.kind == "trial"]
    if not keys or not fine_tunes:
        return []
    values = {k: sorted({importance.hashable(t.params.get(k)) for t in fine_tunes}, key=_order) for k in keys}
    swept = [k for k in keys if len(values[k]) > 1] or keys  # a one-value axis is a constant, not a dimension
    axes = sorted(swept, key=lambda k: (k not in ("training.learning_rate", "lora.rank"), -len(values[k])))[:2]
    x_key, y_key = axes[0], (axes[1] if len(axes) > 1 else None)
    others = [k for k in swept if k not in axes]
    by_trial = {r.trial: r for r in rows}
    panels = []
    for combo in itertools.product(*(values[k] for k in others)):
        fixed = dict(zip(others, combo))
        grid = [[_cell(fine_tunes, by_trial, metric, {**fixed, x_key: x, **({y_key: y} if y_key else {})})
                 for x in values[x_key]] for y in (values[y_key] if y_key else [None])]
        panels.append((", ".join(f"{k}={v}" for k, v in fixed.items()), grid))
    fig = charts.heatmap(panels, x_key, values[x_key], y_key or "", values[y_key] if y_key else [""],
                         f"{metric} ({'x100' if scale(metric) == 100 else 'as is'})")
    return [f"<h2>The grid: {_e(metric)} by {_e(x_key)}{' and ' + _e(y_key) if y_key else ''}</h2>",
            charts.to_svg(fig, "heatmap"),
            "<p class='note'>each cell: the fine-tune's score and its 95% bootstrap interval over the eval examples"
            "</p>"]


def _cell(fine_tunes, by_trial: dict[str, Row], metric: str, wanted: dict):
    match = next((t for t in fine_tunes
                  if all(importance.hashable(t.params.get(k)) == v for k, v in wanted.items())), None)
    row = by_trial.get(match.name) if match else None
    if row is None or metric not in row.scores:
        return None
    return row.scores[metric], format_interval(row.interval) if row.interval else ""


def _order(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _mattered(summary: SweepSummary, metric: str, storage_url: str | None) -> list[str]:
    """Parallel coordinates and hyperparameter importance, read by Optuna from the study (or the grid's)."""
    study, target = importance.study_for(summary, metric, storage_url)
    out = ["<h2>Which settings mattered</h2>"]
    if not importance.completed(study):
        return out + ["<p class='note'>no completed fine-tune yet</p>"]
    problem = importance.importance_problem(study)
    for draw, skip in ((importance.parallel_coordinates, None), (importance.importances, problem)):
        try:
            out.append(f"<p class='note'>{_e(skip)}</p>" if skip else draw(study, target))
        except (ValueError, RuntimeError) as exc:  # Optuna refusing an odd study must not cost the whole report
            out.append(f"<p class='note'>Optuna could not draw this: {_e(type(exc).__name__)}: {_e(exc)}</p>")
    return out


def _scatter(rows: list[Row], metric: str) -> str:
    points = [(r.scores["gen_tokens"], r.scores[metric], r.trial, r.best) for r in rows
              if "gen_tokens" in r.scores and metric in r.scores]
    if not points:
        return "<p class='note'>no completed trial yet</p>"
    fig, _ = charts.scatter(points, "generated tokens (mean)", metric)
    return charts.to_svg(fig, "scatter")


def _trial(row: Row, curve: list[tuple[str, int, float]], predictions: list[dict], metric: str,
           examples: int, ran_on: dict | None = None, origin: str | None = None) -> str:
    brief = f"<li>lineage: {_e(origin)}</li>" if origin else ""
    brief += "".join(f"<li>{_e(line)}</li>" for line in curve_lines(curve))
    brief += f"<li>ran on: {_e(environment.describe(ran_on))}</li>" if ran_on else ""
    return (f"<h3 id='{_e(row.trial)}'>{_e(row.trial)} <small class='note'>{_e(row.kind)}, {_e(row.status)}"
            f"</small></h3><ul class='note'>{brief}</ul>{_samples(predictions, metric, examples)}")


def _samples(predictions: list[dict], metric: str, examples: int) -> str:
    out = []
    for title, picked in worst_and_best(predictions, metric, examples):
        out.append(f"<p><b>{_e(title)} by {_e(metric)}</b></p>")
        for p in picked:
            refs = "".join(f"<div class='ref'>reference {i}: {_e(r)}</div>"
                           for i, r in enumerate(p["references"], 1))
            out.append(f"<div class='ex'><div class='note'>{_e(p['example_id'])}: {_e(metric)} "
                       f"{registered(metric).shown(p[metric])}</div>"
                       f"<div class='pred'>prediction: {_e(p['prediction'])}</div>"
                       f"{refs}</div>")
    return "".join(out)
