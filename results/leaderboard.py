"""Leaderboard: one row per trial and baseline of a sweep, ranked by a ROUGE metric, from the store only."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass

from evaluation.rouge import ROUGE_TYPES
from results.store import SweepSummary, TrialSummary

RANKABLE = ROUGE_TYPES  # every ROUGE variant the evaluation stores can rank the board
FORMATS = ("table", "markdown", "csv", "json")


@dataclass(frozen=True)
class Row:
    best: bool
    trial: str
    kind: str
    prompt: str
    rank: int | None
    lr: float | None
    scores: dict[str, float]
    """ROUGE F1 in percent, gen_tokens and gen_words."""
    delta: float | None
    """Points of the ranking metric above the zero-shot baseline of the same prompt."""
    runtime_s: float | None
    status: str


def build(summary: SweepSummary, metric: str = "rougeL") -> list[Row]:
    if metric not in RANKABLE:
        raise ValueError(f"the ranking metric must be one of {', '.join(RANKABLE)}; got {metric!r}")
    baselines = {t.params.get("prompt"): t.metrics.get(metric) for t in summary.trials
                 if t.kind == "baseline" and t.status == "completed"}
    done = [t for t in summary.trials if t.status == "completed" and metric in t.metrics]
    ranked = sorted(done, key=lambda t: -t.metrics[metric]) + [t for t in summary.trials if t not in done]
    best = ranked[0].name if done else None
    return [_row(t, metric, baselines, t.name == best) for t in ranked]


def _row(t: TrialSummary, metric: str, baselines: dict, best: bool) -> Row:
    base = baselines.get(t.params.get("prompt"))
    value = t.metrics.get(metric)
    delta = None if t.kind == "baseline" or base is None or value is None else 100 * (value - base)
    scores = {k: 100 * t.metrics[k] for k in ROUGE_TYPES if k in t.metrics}
    scores.update({k: t.metrics[k] for k in ("gen_tokens", "gen_words") if k in t.metrics})
    return Row(best, t.name, t.kind, str(t.params.get("prompt", "")), t.params.get("lora.rank"),
               t.params.get("training.learning_rate"), scores, delta, t.runtime_s, t.status)


def render(rows: list[Row], fmt: str, metric: str, notes: dict, sweep: str) -> str:
    if fmt == "json":
        return json.dumps({"sweep": sweep, "metric": metric, "notes": notes,
                           "rows": [asdict(r) for r in rows]}, indent=2)
    header = ["", "trial", "kind", "prompt", "rank", "lr", "R1", "R2", "RL", "RLsum", "gen_tok", "gen_words",
              f"d{_short(metric)}_vs_0shot", "runtime_s", "status"]
    cells = [_cells(r) for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header[1:] + ["best"]] + [c[1:] + ["yes" if r.best else ""]
                                                                               for c, r in zip(cells, rows)])
        return out.getvalue().rstrip("\n")  # the caller prints: no blank last line
    title = [f"sweep {sweep}: ranked by {metric} (F1 x 100); * = best"] + [f"{k}: {v}" for k, v in notes.items()]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join([f"_{t}_  " for t in title] + [""] + lines + ["| " + " | ".join(c) + " |" for c in cells])
    if fmt != "table":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header))]
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header] + cells]
    return "\n".join(title + [""] + body)


def _cells(r: Row) -> list[str]:
    s = r.scores
    return ["*" if r.best else "", r.trial, r.kind, r.prompt, _fmt(r.rank), _lr(r.lr),
            *(_fmt(s.get(k), 2) for k in ROUGE_TYPES), _fmt(s.get("gen_tokens"), 1), _fmt(s.get("gen_words"), 1),
            _fmt(r.delta, 2, signed=True), _fmt(r.runtime_s, 0), r.status]


def _fmt(value, digits: int = 0, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not digits:
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _lr(value) -> str:
    return "-" if value is None else f"{value:.0e}".replace("e-0", "e-")


def _short(metric: str) -> str:
    return metric.replace("rouge", "R")
