"""`sweep compare A B`: the same trials in two sweeps (a grid before and after a change of data, model or
code), on the eval examples both scored, with paired bootstrap intervals of B - A.

Two results compare only when they were scored the same way (tokenizer, references, stemming, decoding, ...);
the number of eval examples may differ, since only shared examples count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from evaluation.metrics import metric as registered
from results.leaderboard import scale
from results.significance import Interval, paired_difference
from results.store import TrialSummary

_IGNORED = ("eval_examples",)  # compared on the shared examples only


class CompareError(ValueError):
    """The two sides cannot be compared: scored differently, or nothing shared."""


@dataclass(frozen=True)
class Pair:
    trial_a: str
    trial_b: str
    mean_a: float
    mean_b: float
    """Means over the shared examples only, scaled like the leaderboard (ROUGE x 100)."""
    difference: Interval
    """B - A, paired over the shared examples."""
    only_a: int
    only_b: int
    metric_lower_is_better: bool = False

    @property
    def verdict(self) -> str:
        if not self.difference.excludes_zero:
            return "no clear difference"
        better = (self.difference.estimate > 0) != self.metric_lower_is_better
        return "B better" if better else "A better"


def compare(a: list[TrialSummary], b: list[TrialSummary], scores_a: dict[str, dict[str, float]],
            scores_b: dict[str, dict[str, float]], metric: str, samples: int = 1000) -> list[Pair]:
    """One Pair per trial name completed on both sides (or the one pair given), B - A on shared examples."""
    pairs = _matched(a, b)
    if not pairs:
        raise CompareError("no completed trial with the same name is on both sides; name two trials instead, "
                           "e.g. sweep compare A:v1-r8 B:v1-r8")
    problems = [_scoring_problem(x, y) for x, y in pairs]
    if any(problems):
        raise CompareError("results scored differently are not compared: " + "; ".join(p for p in problems if p))
    out = []
    for x, y in pairs:
        mine, theirs = scores_a.get(x.name, {}), scores_b.get(y.name, {})
        shared = sorted(mine.keys() & theirs.keys())
        if not shared:
            raise CompareError(f"{x.name} and {y.name} share no eval example with a {metric} score; "
                               f"given {len(mine)} and {len(theirs)} examples")
        factor = scale(metric)
        diff = paired_difference(theirs, mine, samples)  # over the examples both scored
        out.append(Pair(x.name, y.name, factor * _mean(mine, shared), factor * _mean(theirs, shared),
                        diff.scaled(factor), len(mine.keys() - theirs.keys()), len(theirs.keys() - mine.keys()),
                        registered(metric).lower_is_better))
    return out


def _matched(a: list[TrialSummary], b: list[TrialSummary]) -> list[tuple[TrialSummary, TrialSummary]]:
    done_b = {t.name: t for t in b if t.status == "completed"}
    if len(a) == len(b) == 1:  # two named trials
        return [(a[0], b[0])] if a[0].status == b[0].status == "completed" else []
    return [(t, done_b[t.name]) for t in a if t.status == "completed" and t.name in done_b]


def _scoring_problem(x: TrialSummary, y: TrialSummary) -> str:
    how_x = {k: v for k, v in (x.scoring or {}).items() if k not in _IGNORED}
    how_y = {k: v for k, v in (y.scoring or {}).items() if k not in _IGNORED}
    if how_x == how_y:
        return ""
    keys = sorted(k for k in how_x.keys() | how_y.keys() if how_x.get(k) != how_y.get(k))
    return f"{x.name} vs {y.name} differ in " + ", ".join(f"{k} ({how_x.get(k)!r} vs {how_y.get(k)!r})" for k in keys)


def _mean(scores: dict[str, float], keys: list[str]) -> float:
    return sum(scores[k] for k in keys) / len(keys)


def render(pairs: list[Pair], fmt: str, metric: str, sweep_a: str, sweep_b: str) -> str:
    if fmt == "json":
        return json.dumps({"metric": metric, "a": sweep_a, "b": sweep_b,
                           "pairs": [{**asdict(p), "verdict": p.verdict} for p in pairs]}, indent=2)
    head = ["trial (A / B)", f"A {metric}", f"B {metric}", "B - A [95% CI]", "shared", "only A", "only B", "verdict"]
    body = [[p.trial_a if p.trial_a == p.trial_b else f"{p.trial_a} / {p.trial_b}", f"{p.mean_a:.2f}",
             f"{p.mean_b:.2f}", f"{p.difference.estimate:+.2f} [{p.difference.low:+.2f}, {p.difference.high:+.2f}]",
             str(p.difference.examples), str(p.only_a), str(p.only_b), p.verdict] for p in pairs]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = [f"A = {sweep_a}, B = {sweep_b}: {metric} on the eval examples both scored; paired bootstrap, 95%"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + body]
    return "\n".join(lines)
