"""Every metric a trial reports, in one registry: its direction, how it is shown (scale, label, digits), where
it is shown (its leaderboard column, the report's board, the seed repeats) and whether it ranks a board or can
be a study objective. The leaderboard, show, the report, repeats, compare, MLflow, the model card, study
objectives and pruning all read it here at the time they run, so a loss is "worst" at its highest value
everywhere, and a metric added here (with the code that computes it) shows in every view."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    """As trials store it: rougeL, eval_loss, ..."""
    label: str
    """Short column label: RL, eval_loss, BS, ..."""
    lower_is_better: bool = False
    scale: float = 1.0
    """Shown value = stored value x scale: 100 for F1 scores in [0, 1] (points), 1 for losses and counts."""
    digits: int = 2
    """Decimals shown."""
    rankable: bool = False
    """Can rank a leaderboard (`--metric`)."""
    objective: bool = True
    """Can be a study objective."""
    needs_bertscore: bool = False
    """Computed only with scoring.bertscore_model set."""
    unit: str = ""
    """How the shown value reads: `F1 x 100`, `nats per token`, `tokens`."""
    either_direction: bool = False
    """A study may also push it the other way (longer summaries); else an objective must follow `direction`."""
    column: str = ""
    """Its leaderboard column: `main` (every board, after the settings), `extra` (after the status, where a row
    has it), `ranked` (an extra column only on a board it ranks), "" (none)."""
    page_label: str = ""
    """Its header on the HTML report's board, which fits an 800-pixel page; "" leaves it off the page."""
    repeat: bool = False
    """Averaged over seed repeats (`results.repeats`: a mean and an sd per config)."""
    count: bool = False
    """Shown as a count: 4.9M, 135M, 1.2B (parameters)."""
    final: bool = True
    """A trial's final value (False: a training curve's points)."""

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "minimize" if self.lower_is_better else "maximize"

    def shown(self, value: float | None) -> str:
        """The stored value as every view prints it."""
        return self.cell(None if value is None else self.scale * value)

    def cell(self, scaled: float | None) -> str:
        """An already scaled value (x `scale`) as every view prints it."""
        if scaled is None:
            return "-"
        return format_count(scaled) if self.count else f"{scaled:.{self.digits}f}"

    def best_first(self, value: float) -> float:
        """A sort key that puts the best value first."""
        return value if self.lower_is_better else -value


_F1 = dict(scale=100.0, digits=2, unit="F1 x 100")
_ROUGE = dict(rankable=True, repeat=True, **_F1)
_SIZE = dict(lower_is_better=True, objective=False)
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("rouge1", "R1", column="main", page_label="R1", **_ROUGE),
    Metric("rouge2", "R2", column="main", page_label="R2", **_ROUGE),
    Metric("rougeL", "RL", column="main", page_label="RL", **_ROUGE),
    Metric("rougeLsum", "RLsum", column="main", page_label="RLsum", **_ROUGE),
    Metric("rouge_sum", "R_sum", column="ranked", **_ROUGE),  # R1 + R2 + RL F1
    Metric("gen_tokens", "gen_tok", lower_is_better=True, digits=1, unit="tokens", either_direction=True,
           column="main", page_label="gen tok", repeat=True),
    Metric("gen_words", "gen_words", lower_is_better=True, digits=1, unit="words", either_direction=True,
           column="main"),
    Metric("eval_loss", "eval_loss", lower_is_better=True, digits=3, rankable=True, unit="nats per summary token",
           column="extra", page_label="eval loss", repeat=True),
    # What a trial trained and saved: recorded with the metrics, never an objective.
    Metric("trainable_params", "trainable", digits=0, unit="parameters", column="extra", page_label="trainable",
           count=True, **_SIZE),
    Metric("total_params", "total", digits=0, unit="parameters", count=True, **_SIZE),
    Metric("saved_mib", "saved_MiB", digits=1, unit="MiB", column="extra", page_label="MiB", **_SIZE),
    Metric("bertscore", "BERTScore", rankable=True, needs_bertscore=True, column="extra", repeat=True, **_F1),
    Metric("bertscore_precision", "BS_P", needs_bertscore=True, column="extra", **_F1),
    Metric("bertscore_recall", "BS_R", needs_bertscore=True, column="extra", **_F1),
    # The training curve's loss (train/loss): a curve, not a final metric.
    Metric("loss", "loss", lower_is_better=True, digits=4, objective=False, unit="nats per summary token",
           final=False),
)}

RANKABLE = tuple(name for name, m in METRICS.items() if m.rankable)
OBJECTIVES = tuple(name for name, m in METRICS.items() if m.objective)
BERTSCORE_METRICS = tuple(name for name, m in METRICS.items() if m.needs_bertscore)
LOWER_IS_BETTER = tuple(name for name, m in METRICS.items() if m.lower_is_better)


def metric(name: str) -> Metric:
    """The registered metric; a name stored by another version reads as a larger-is-better plain number."""
    return METRICS.get(name) or Metric(name, name)


def metrics_where(**wanted) -> list[Metric]:
    """The registered metrics whose fields equal `wanted` (e.g. rankable=True, column="main"), in registry
    order, as the registry holds them now."""
    return [m for m in METRICS.values() if all(getattr(m, k) == v for k, v in wanted.items())]


def rankable_names() -> tuple[str, ...]:
    """What `--metric` may rank by."""
    return tuple(m.name for m in metrics_where(rankable=True))


def format_count(value: float | None) -> str:
    """Parameters as 4.9M / 135M / 1.2B."""
    if value is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"
