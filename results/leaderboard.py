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
    pareto: bool | None = None
    """On the Pareto front of a multi-objective study; None when the sweep has one objective."""


def build(summary: SweepSummary, metric: str = "rougeL") -> list[Row]:
    if metric not in RANKABLE:
        raise ValueError(f"the ranking metric must be one of {', '.join(RANKABLE)}; got {metric!r}")
    baselines = {t.params.get("prompt"): t.metrics.get(metric) for t in summary.trials
                 if t.kind == "baseline" and t.status == "completed"}
    done = [t for t in summary.trials if t.status == "completed" and metric in t.metrics]
    ranked = sorted(done, key=lambda t: -t.metrics[metric]) + [t for t in summary.trials if t not in done]
    best = ranked[0].name if done else None
    objectives = study_objectives(summary.spec)
    front = pareto_front(summary.trials, objectives) if len(objectives) > 1 else None
    return [_row(t, metric, baselines, t.name == best, None if front is None else t.name in front) for t in ranked]


def study_objectives(spec: dict) -> list[tuple[str, str]]:
    """(metric, direction) pairs of an optuna sweep, from the spec stored with it; [] for a grid."""
    search = spec.get("search", {})
    if search.get("type") != "optuna":
        return []
    return [(o["metric"], o["direction"]) for o in search.get("optuna", {}).get("objectives", [])]


def pareto_front(trials: list[TrialSummary], objectives: list[tuple[str, str]]) -> set[str]:
    """Names of the completed fine-tunes no other completed fine-tune beats on every objective."""
    done = [t for t in trials if t.kind == "trial" and t.status == "completed"
            and all(m in t.metrics for m, _ in objectives)]
    signed = {t.name: [t.metrics[m] * (1 if d == "maximize" else -1) for m, d in objectives] for t in done}
    return {name for name, mine in signed.items()
            if not any(_dominates(other, mine) for o, other in signed.items() if o != name)}


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _row(t: TrialSummary, metric: str, baselines: dict, best: bool, pareto: bool | None) -> Row:
    base = baselines.get(t.params.get("prompt"))
    value = t.metrics.get(metric)
    delta = None if t.kind == "baseline" or base is None or value is None else 100 * (value - base)
    scores = {k: 100 * t.metrics[k] for k in ROUGE_TYPES if k in t.metrics}
    scores.update({k: t.metrics[k] for k in ("gen_tokens", "gen_words") if k in t.metrics})
    return Row(best, t.name, t.kind, str(t.params.get("prompt", "")), t.params.get("lora.rank"),
               t.params.get("training.learning_rate"), scores, delta, t.runtime_s, t.status, pareto)


def render(rows: list[Row], fmt: str, metric: str, notes: dict, sweep: str) -> str:
    if fmt == "json":
        return json.dumps({"sweep": sweep, "metric": metric, "notes": notes,
                           "rows": [asdict(r) for r in rows]}, indent=2)
    header = ["", "trial", "kind", "prompt", "rank", "lr", "R1", "R2", "RL", "RLsum", "gen_tok", "gen_words",
              f"d{_short(metric)}_vs_0shot", "runtime_s", "status"]
    cells = [_cells(r) for r in rows]
    multi = any(r.pareto is not None for r in rows)
    if multi:
        header.append("pareto")
        cells = [c + ["yes" if r.pareto else ""] for c, r in zip(cells, rows)]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header[1:] + ["best"]] + [c[1:] + ["yes" if r.best else ""]
                                                                               for c, r in zip(cells, rows)])
        return out.getvalue().rstrip("\n")  # the caller prints: no blank last line
    title = [f"sweep {sweep}: ranked by {metric} (F1 x 100); * = best"] + [f"{k}: {v}" for k, v in notes.items()]
    if multi:
        title.append("pareto: yes = no other completed fine-tune is at least as good on every study objective")
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
    """2e-4 -> 2e-4, 3.217e-4 (a study's pick) -> 3.2e-4."""
    if value is None:
        return "-"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _short(metric: str) -> str:
    return metric.replace("rouge", "R")
