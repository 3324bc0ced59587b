"""Leaderboard: one row per trial and baseline of a sweep, ranked by a ROUGE metric, from the store only.

Rows whose scores were computed differently (tokenizer, references, metric version, examples) are
never ranked against each other silently: each such group gets its own letter, its own best and its
own differences, and the header says so. With per-example scores, every difference comes with a
95% paired bootstrap interval over the eval examples.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from evaluation.metrics import Metric, metric as registered, metrics_where, rankable_names
from results.provenance import scoring_letters
from results.significance import Interval, mean_interval, paired_difference
from results.store import SweepSummary, TrialSummary
from results.stored_spec import stored_spec

if TYPE_CHECKING:
    from sweeps.spec import SweepSpec
    from results.repeats import RepeatGroup

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
    """Every registered final metric the trial has, scaled as shown (ROUGE F1 in points)."""
    delta: float | None
    """Points of the ranking metric above its own zero-shot baseline (same model, prompt, quantization, ...)."""
    runtime_s: float | None
    status: str
    pareto: bool | None = None
    """On the Pareto front of a multi-objective study; None when the sweep has one objective."""
    scoring: str = "A"
    """Letter of the way its scores were computed (see results.provenance); rows compare within a letter."""
    interval: Interval | None = None
    """95% bootstrap interval of the ranking metric (points)."""
    vs_best: Interval | None = None
    """Paired difference to the best row of its scoring group (points)."""
    vs_baseline: Interval | None = None
    """Paired difference to its own zero-shot baseline (points)."""


def build(summary: SweepSummary, metric: str = "rougeL", per_example: dict[str, dict[str, float]] | None = None,
          samples: int = 1000) -> list[Row]:
    """Rows ranked by `metric` within each scoring group; `per_example` ({trial: {example: score}},
    from Store.example_scores) adds the bootstrap intervals."""
    if metric not in rankable_names():
        raise ValueError(f"the ranking metric must be one of {', '.join(rankable_names())}; got {metric!r}")
    letters = scoring_letters(summary.trials)
    done = [t for t in summary.trials if t.status == "completed" and metric in t.metrics]
    ranking = registered(metric)
    ranked = sorted(done, key=lambda t: (letters[t.name], ranking.best_first(t.metrics[metric])))
    ranked += [t for t in summary.trials if t not in done]
    best = {}
    for t in ranked[:len(done)]:
        best.setdefault(letters[t.name], t)
    baselines = {t.name: t for t in done if t.kind == "baseline"}
    objectives = study_objectives(stored_spec(summary))
    front = pareto_front(summary.trials, objectives) if len(objectives) > 1 else None
    compare = _Comparer(metric, per_example, samples, scale(metric))
    rows = []
    for t in ranked:
        group = letters[t.name]
        top, base = best.get(group), own_baseline(t, baselines, letters)
        rows.append(_row(t, metric, base, top is t, None if front is None else t.name in front, group,
                         compare.intervals(t, top, base)))
    return rows


def own_baseline(t: TrialSummary, baselines: dict[str, TrialSummary], letters: dict[str, str]) -> TrialSummary | None:
    """The completed zero-shot run a fine-tune is compared with: the one its plan named (same model, prompt,
    quantization, sequence length, generation and scoring), if it was scored the same way. Results stored
    before trials recorded it fall back to the baseline of the same prompt."""
    if t.kind == "baseline":
        return None
    if t.baseline is not None:
        found = baselines.get(t.baseline)
    else:
        found = next((b for b in baselines.values() if b.params.get("prompt") == t.params.get("prompt")
                      and letters[b.name] == letters[t.name]), None)
    return found if found is not None and letters[found.name] == letters[t.name] else None


class _Comparer:
    """Bootstrap intervals for one board: the metric's interval per trial and its paired differences."""

    def __init__(self, metric: str, per_example: dict[str, dict[str, float]] | None, samples: int, factor: float):
        self.metric, self.scores, self.samples, self.factor = metric, per_example or {}, samples, factor

    def intervals(self, t: TrialSummary, top: TrialSummary | None, base: TrialSummary | None):
        mine = self.scores.get(t.name)
        if not mine or t.status != "completed":
            return None, None, None
        return (mean_interval(list(mine.values()), self.samples).scaled(self.factor),
                self._difference(mine, top) if top is not None and top is not t else None,
                self._difference(mine, base) if base is not None and t.kind != "baseline" else None)

    def _difference(self, mine: dict[str, float], other: TrialSummary) -> Interval | None:
        theirs = self.scores.get(other.name)
        found = paired_difference(mine, theirs, self.samples) if theirs else None
        return found.scaled(self.factor) if found else None


def scale(metric: str) -> float:
    """Shown x 100 (points) for scores in [0, 1]; a loss is shown as it is (the metric registry says which)."""
    return registered(metric).scale


def study_objectives(spec: SweepSpec) -> list[tuple[str, str]]:
    """(metric, direction) pairs of an optuna sweep, from the spec stored with it; [] for a grid."""
    study = spec.search.study
    return [] if study is None else [(o.metric, o.direction) for o in study.objectives]


def pareto_front(trials: list[TrialSummary], objectives: list[tuple[str, str]]) -> set[str]:
    """Names of the completed fine-tunes no other completed fine-tune beats on every objective."""
    done = [t for t in trials if t.kind == "trial" and t.status == "completed"
            and all(m in t.metrics for m, _ in objectives)]
    signed = {t.name: [t.metrics[m] * (1 if d == "maximize" else -1) for m, d in objectives] for t in done}
    return {name for name, mine in signed.items()
            if not any(_dominates(other, mine) for o, other in signed.items() if o != name)}


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _row(t: TrialSummary, metric: str, base: TrialSummary | None, best: bool, pareto: bool | None, group: str,
         intervals: tuple) -> Row:
    value, base_value = t.metrics.get(metric), base.metrics.get(metric) if base is not None else None
    delta = None if t.kind == "baseline" or base_value is None or value is None else scale(metric) * (value - base_value)
    scores = {m.name: m.scale * t.metrics[m.name] for m in metrics_where(final=True) if m.name in t.metrics}
    interval, vs_best, vs_baseline = intervals
    return Row(best=best, trial=t.name, kind=t.kind, prompt=str(t.params.get("prompt", "")),
               rank=t.params.get("lora.rank"), lr=t.params.get("training.learning_rate"), scores=scores, delta=delta,
               runtime_s=t.runtime_s, status=t.status, pareto=pareto, scoring=group, interval=interval,
               vs_best=vs_best, vs_baseline=vs_baseline)


def render(rows: list[Row], fmt: str, metric: str, notes: dict, sweep: str,
           groups: dict[str, dict | None] | None = None, hardware: list[str] | None = None,
           repeats: list[RepeatGroup] | None = None) -> str:
    """`hardware`: results.environment.sweep_lines of the sweep's trials, shown under the notes; `repeats`:
    results.repeats.group_repeats of a sweep with a seed axis, shown under the board (not in csv)."""
    groups, hardware, repeats = groups or {}, hardware or [], repeats or []
    if fmt == "json":
        return json.dumps({"sweep": sweep, "metric": metric, "notes": notes, "scoring": groups, "hardware": hardware,
                           "rows": [asdict(r) for r in rows],
                           "repeats": [{**asdict(g), "n": g.n} for g in repeats]}, indent=2)
    m = _short(metric)
    header = ["", "trial", "kind", "prompt", "rank", "lr", *(k.label for k in metrics_where(column="main")),
              f"{m}_95ci", f"d{m}_vs_best", f"d{m}_vs_0shot", "runtime_s", "status"]
    cells = [_cells(r) for r in rows]
    several = len({r.scoring for r in rows}) > 1
    multi = any(r.pareto is not None for r in rows)
    extra = [k for k in metrics_where(column="extra") if any(k.name in r.scores for r in rows)]
    columns = [(k.label, score_cell(k)) for k in _ranked_columns(metric) + extra]
    columns += [(column, value) for shown, column, value in ((several, "scoring", lambda r: r.scoring),
                                                               (multi, "pareto", lambda r: "yes" if r.pareto else ""))
                if shown]
    for column, value in columns:
        header.append(column)
        cells = [c + [value(r)] for c, r in zip(cells, rows)]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header[1:] + ["best"]] + [c[1:] + ["yes" if r.best else ""]
                                                                               for c, r in zip(cells, rows)])
        return out.getvalue().rstrip("\n")  # the caller prints: no blank last line
    title = _title(sweep, metric, notes, groups, several, multi) + hardware
    if fmt not in ("markdown", "table"):
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    shown_title = [f"_{t}_  " for t in title] if fmt == "markdown" else title
    text = "\n".join(shown_title + [""] + _grid_text(header, cells, fmt))
    if not repeats:
        return text
    head, body = repeat_cells(repeats, metric)
    caption = (f"repeats over training.seed: configs ranked by the mean {metric}; sd = standard deviation across "
               f"seeds (n - 1), n = completed repeats; * = best mean")
    return "\n".join([text, "", f"_{caption}_" if fmt == "markdown" else caption, ""] + _grid_text(head, body, fmt))


def _ranked_columns(metric: str) -> list[Metric]:
    """The columns shown only on a board their metric ranks (R_sum)."""
    return [k for k in metrics_where(column="ranked") if k.name == metric]


def score_cell(k: Metric) -> Callable[[Row], str]:
    """A row's cell of metric `k`, as every board prints it."""
    return lambda r: k.cell(r.scores.get(k.name))


def _grid_text(header: list[str], cells: list[list[str]], fmt: str) -> list[str]:
    if fmt == "markdown":
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(c) + " |"
                                                                                for c in cells]
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header] + cells]


def repeat_cells(repeats: list[RepeatGroup], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the repeats table: per config the mean of each metric and the sd of the ranking one."""
    main = metrics_where(column="main", repeat=True)  # the ranking metric after the other ranking ones
    order = [k.name for k in main if k.rankable] + [metric] + [k.name for k in main if not k.rankable]
    shown = list(dict.fromkeys(k for k in order if any(k in g.mean for g in repeats)))
    m = registered(metric)
    header = ["", "config", "kind", "n", "seeds", *(registered(k).label for k in shown), f"{m.label}_sd"]
    cells = [["*" if g.best else "", g.config, g.kind, str(g.n), ",".join(map(str, g.seeds)),
              *(registered(k).cell(g.mean.get(k)) for k in shown), m.cell(g.std.get(metric))]
             for g in repeats]
    return header, cells


def _title(sweep: str, metric: str, notes: dict, groups: dict, several: bool, multi: bool) -> list[str]:
    ranking = registered(metric)
    how = "lowest first" if ranking.lower_is_better else ranking.unit
    title = [f"sweep {sweep}: ranked by {metric} ({how}); * = best"] + [f"{k}: {v}" for k, v in notes.items()]
    for letter, how in sorted(groups.items()):
        title.append(f"{f'scoring {letter}' if several else 'scoring'}: {describe_scoring(how)}")
    if several:
        title.append(f"WARNING: rows were scored in {len(groups)} different ways; best, ranks and differences "
                     "are computed within one scoring letter only, never across")
    title.append("[lo, hi]: 95% paired bootstrap interval over the eval examples; "
                 "! = the difference's interval excludes 0 (unlikely to be noise)")
    if multi:
        title.append("pareto: yes = no other completed fine-tune is at least as good on every study objective")
    return title


def describe_scoring(how: dict | None) -> str:
    """One line of a result's scoring provenance, as every view prints it."""
    if not how:
        return "not recorded (stored before 0.2: first reference, ascii tokenizer)"
    return ", ".join(f"{k} {v}" for k, v in how.items())


def format_interval(interval: Interval | None) -> str:
    return "-" if interval is None else f"[{interval.low:.1f}, {interval.high:.1f}]"


def format_difference(interval: Interval | None, plain: float | None = None) -> str:
    """`+2.31 [+0.4, +4.2]!` (`!`: the interval excludes 0), else the plain difference or `-`."""
    if interval is None:
        return _fmt(plain, 2, signed=True)
    mark = "!" if interval.excludes_zero else ""
    return f"{interval.estimate:+.2f} [{interval.low:+.1f}, {interval.high:+.1f}]{mark}"


def _cells(r: Row) -> list[str]:
    return ["*" if r.best else "", r.trial, r.kind, r.prompt, _fmt(r.rank), _lr(r.lr),
            *(k.cell(r.scores.get(k.name)) for k in metrics_where(column="main")),
            format_interval(r.interval), format_difference(r.vs_best), format_difference(r.vs_baseline, r.delta),
            _fmt(r.runtime_s, 0), r.status]


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
    return registered(metric).label
