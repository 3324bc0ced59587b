"""Every metric a trial reports, in one registry: its direction, how it is shown (scale, label, digits) and
whether it ranks a board or can be a study objective. Leaderboard, show, report, compare, the model card,
study objectives and pruning all read it here, so a loss is "worst" at its highest value everywhere."""

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

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "minimize" if self.lower_is_better else "maximize"

    def shown(self, value: float | None) -> str:
        """The stored value as every view prints it."""
        return "-" if value is None else f"{self.scale * value:.{self.digits}f}"

    def best_first(self, value: float) -> float:
        """A sort key that puts the best value first."""
        return value if self.lower_is_better else -value


_F1 = dict(scale=100.0, digits=2, unit="F1 x 100")
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("rouge1", "R1", rankable=True, **_F1),
    Metric("rouge2", "R2", rankable=True, **_F1),
    Metric("rougeL", "RL", rankable=True, **_F1),
    Metric("rougeLsum", "RLsum", rankable=True, **_F1),
    Metric("rouge_sum", "R_sum", rankable=True, **_F1),  # R1 + R2 + RL F1
    Metric("eval_loss", "eval_loss", lower_is_better=True, digits=3, rankable=True, unit="nats per summary token"),
    Metric("gen_tokens", "gen_tok", lower_is_better=True, digits=1, unit="tokens", either_direction=True),
    Metric("gen_words", "gen_words", lower_is_better=True, digits=1, unit="words", either_direction=True),
    Metric("bertscore", "BS", rankable=True, needs_bertscore=True, **_F1),
    Metric("bertscore_precision", "BS_P", needs_bertscore=True, **_F1),
    Metric("bertscore_recall", "BS_R", needs_bertscore=True, **_F1),
    # The training curve's loss (train/loss): a curve, not a final metric.
    Metric("loss", "loss", lower_is_better=True, digits=4, objective=False, unit="nats per summary token"),
    # What a trial trained and saved: recorded with the metrics, never an objective.
    Metric("trainable_params", "trainable", lower_is_better=True, digits=0, objective=False, unit="parameters"),
    Metric("total_params", "total", lower_is_better=True, digits=0, objective=False, unit="parameters"),
    Metric("saved_mib", "saved_MiB", lower_is_better=True, digits=1, objective=False, unit="MiB"),
)}

RANKABLE = tuple(name for name, m in METRICS.items() if m.rankable)
OBJECTIVES = tuple(name for name, m in METRICS.items() if m.objective)
BERTSCORE_METRICS = tuple(name for name, m in METRICS.items() if m.needs_bertscore)
LOWER_IS_BETTER = tuple(name for name, m in METRICS.items() if m.lower_is_better)


def metric(name: str) -> Metric:
    """The registered metric; a name stored by another version reads as a larger-is-better plain number."""
    return METRICS.get(name) or Metric(name, name)
