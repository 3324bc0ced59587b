"""`sweep report SWEEP`: one self-contained HTML file (inline CSS and SVG, no script, no network) with
the leaderboard, each trial's training and eval curves, ROUGE against generated length, and
prediction samples. Every string from the store (model output above all) is HTML-escaped."""

from __future__ import annotations

from html import escape

from evaluation.rouge import ROUGE_TYPES
from results import environment
from results.leaderboard import Row, describe_scoring, format_count, format_difference, format_interval
from results.show import curve_lines, curve_series, worst_and_best
from results.store import SweepSummary

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td.l,th.l{text-align:left}td{white-space:nowrap}tr.best{background:#eef7ee}svg{background:#fafafa;border:1px solid #ddd;margin:4px}
.ex{border-left:3px solid #ccc;margin:.6em 0;padding:.2em .8em}.pred{white-space:pre-wrap}
.ref{white-space:pre-wrap;color:#555}h3{margin-top:1.6em}.note{color:#666}"""
_WIDTH, _HEIGHT, _PAD = 420, 200, 30


def render(summary: SweepSummary, rows: list[Row], metric: str, curves: dict[str, list[tuple[str, int, float]]],
           predictions: dict[str, list[dict]], groups: dict, examples: int = 3) -> str:
    parts = [f"<h1>sweep {_e(summary.name)}</h1>", _notes(summary, groups), "<h2>Leaderboard</h2>",
             _board(rows, metric), "<h2>ROUGE against generated length</h2>", _scatter(rows, metric),
             "<h2>Trials</h2>"]
    ran_on = {t.name: t.environment for t in summary.trials}
    for row in rows:
        parts.append(_trial(row, curves.get(row.trial, []), predictions.get(row.trial, []), metric, examples,
                            ran_on.get(row.trial)))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>sweep " + _e(summary.name) + "</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


def _e(value) -> str:
    return escape(str(value), quote=True)


def _notes(summary: SweepSummary, groups: dict) -> str:
    items = [f"<li>{_e(k)}: {_e(v)}</li>" for k, v in summary.notes.items()]
    for letter, how in sorted(groups.items()):
        items.append(f"<li>scoring {_e(letter)}: {_e(describe_scoring(how))}</li>")
    items += [f"<li>{_e(line)}</li>" for line in environment.sweep_lines(summary.trials)]
    return f"<ul class='note'>{''.join(items)}</ul>"


def _board(rows: list[Row], metric: str) -> str:
    head = ["trial", "kind", "status", "prompt", "rank", "lr", *ROUGE_TYPES, "gen_tokens", "eval_loss", "trainable",
            "saved MiB", f"{metric} 95% CI", "vs best", "vs 0-shot", "scoring"]
    body = []
    for r in rows:
        cells = [r.trial, r.kind, r.status, r.prompt, r.rank if r.rank is not None else "-",
                 f"{r.lr:.2g}" if r.lr else "-", *(_num(r.scores.get(k)) for k in ROUGE_TYPES),
                 _num(r.scores.get("gen_tokens"), 1), _num(r.scores.get("eval_loss"), 3),
                 format_count(r.scores.get("trainable_params")), _num(r.scores.get("saved_mib"), 1),
                 format_interval(r.interval), format_difference(r.vs_best),
                 format_difference(r.vs_baseline, r.delta), r.scoring]
        tds = "".join(f"<td class='l'>{_e(c)}</td>" if i < 4 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        body.append(f"<tr class='{'best' if r.best else ''}'>{tds}</tr>")
    ths = "".join(f"<th class='l'>{_e(h)}</th>" if i < 4 else f"<th>{_e(h)}</th>" for i, h in enumerate(head))
    return f"<table><tr>{ths}</tr>{''.join(body)}</table>"


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _scatter(rows: list[Row], metric: str) -> str:
    points = [(r.scores["gen_tokens"], r.scores[metric], r.trial) for r in rows
              if "gen_tokens" in r.scores and metric in r.scores]
    if not points:
        return "<p class='note'>no completed trial yet</p>"
    return _svg([(label, [(x, y)]) for x, y, label in points], "generated tokens", f"{metric} (F1 x 100)",
                dots=True)


def _trial(row: Row, curve: list[tuple[str, int, float]], predictions: list[dict], metric: str,
           examples: int, ran_on: dict | None = None) -> str:
    charts = [_svg([(name, pts)], "step", name) for name, pts in curve_series(curve).items()
              if name in ("train/loss", f"eval/{metric}") and len(pts) > 1]
    brief = "".join(f"<li>{_e(line)}</li>" for line in curve_lines(curve))
    brief += f"<li>ran on: {_e(environment.describe(ran_on))}</li>" if ran_on else ""
    return (f"<h3 id='{_e(row.trial)}'>{_e(row.trial)} <small class='note'>{_e(row.kind)}, {_e(row.status)}"
            f"</small></h3>{''.join(charts)}<ul class='note'>{brief}</ul>{_samples(predictions, metric, examples)}")


def _samples(predictions: list[dict], metric: str, examples: int) -> str:
    out = []
    for title, picked in worst_and_best(predictions, metric, examples):
        out.append(f"<p><b>{_e(title)} by {_e(metric)}</b></p>")
        for p in picked:
            refs = "".join(f"<div class='ref'>reference {i}: {_e(r)}</div>"
                           for i, r in enumerate(p["references"], 1))
            out.append(f"<div class='ex'><div class='note'>{_e(p['example_id'])}: {_e(metric)} "
                       f"{100 * p[metric]:.1f}</div><div class='pred'>prediction: {_e(p['prediction'])}</div>"
                       f"{refs}</div>")
    return "".join(out)


def _svg(series: list[tuple[str, list[tuple[float, float]]]], x_label: str, y_label: str,
         dots: bool = False) -> str:
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def at(x: float, y: float) -> tuple[float, float]:
        sx = _PAD + (x - x0) / ((x1 - x0) or 1) * (_WIDTH - 2 * _PAD)
        sy = _HEIGHT - _PAD - (y - y0) / ((y1 - y0) or 1) * (_HEIGHT - 2 * _PAD)
        return round(sx, 1), round(sy, 1)

    marks = []
    for label, pts in series:
        coords = [at(x, y) for x, y in pts]
        if dots:
            marks += [f"<circle cx='{cx}' cy='{cy}' r='4' fill='#3a7'><title>{_e(label)}</title></circle>"
                      f"<text x='{cx + 6}' y='{cy + 3}' font-size='9'>{_e(label)}</text>" for cx, cy in coords]
        else:
            marks.append("<polyline fill='none' stroke='#37a' stroke-width='1.5' points='"
                         + " ".join(f"{cx},{cy}" for cx, cy in coords) + "'/>")
    axes = (f"<text x='{_PAD}' y='14' font-size='11'>{_e(y_label)}: {y0:.3g} to {y1:.3g}</text>"
            f"<text x='{_PAD}' y='{_HEIGHT - 8}' font-size='11'>{_e(x_label)}: {x0:.3g} to {x1:.3g}</text>")
    return f"<svg width='{_WIDTH}' height='{_HEIGHT}' xmlns='http://www.w3.org/2000/svg'>{axes}{''.join(marks)}</svg>"
