"""The sweep spec as typed objects: one dataclass per YAML section, a docstring per field.

Loading a file (orchestrator.planning.loading) builds these through sweeps.schema and runs the cross-field
checks (orchestrator.planning.checks); the result views rebuild a stored spec the same way (results.stored_spec).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.config import (AugmentationConfig, ConfigProblem, DatasetConfig, GenerationConfig, LoraSettings,
                            ModelConfig, QuantizationConfig, ScoringConfig, TrainingConfig)

STORE_ENV = "QLORA_SWEEP_STORE"


@dataclass(frozen=True)
class Dimension:
    """One axis of an Optuna search space: `choices`, or a numeric range `low`..`high`."""

    choices: list[Any] | None = None
    """Categorical values to pick from (prompt names, ranks, ...); or give low and high instead."""
    low: float | None = None
    """Lower end of a numeric range, inclusive."""
    high: float | None = None
    """Upper end of a numeric range, inclusive."""
    log: bool = False
    """Sample uniformly in log space: the usual choice for learning rates."""
    step: float | None = None
    """Spacing of a numeric range (4 gives ranks 4, 8, 12, ...); null = continuous floats, or 1 for integers."""


@dataclass(frozen=True)
class Objective:
    metric: str = "rougeL"
    """A final metric of every trial: rouge1, rouge2, rougeL, rougeLsum, rouge_sum, eval_loss (minimize),
    gen_tokens, gen_words; or bertscore,
    bertscore_precision, bertscore_recall when scoring.bertscore_model is set."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether larger (ROUGE) or smaller (generated length) is better."""


@dataclass(frozen=True)
class OptunaSettings:
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """TPE learns from finished trials; random is the honest baseline; grid walks categorical spaces."""
    n_trials: int = field(default=8, metadata={"ge": 1})
    """Study trials in total, counted across re-runs (a resumed study only runs what is missing)."""
    seed: int | None = 0
    """Sampler seed, so a study proposes the same first trials each time; null = fresh randomness."""
    objectives: list[Objective] = field(default_factory=lambda: [Objective()])
    """One objective, or several for a Pareto front (e.g. max rougeL, min gen_tokens)."""
    pruner: Literal["none", "median", "successive_halving", "wilcoxon"] = "none"
    """Stop bad trials early from their interim evaluations; successive_halving is asynchronous (ASHA);
    wilcoxon pairs each interim eval's per-example scores with the best trial's on the same examples."""
    pruner_startup_trials: int = field(default=2, metadata={"ge": 0})
    """Median pruner: trials that must finish before any is pruned."""
    reduction_factor: int = field(default=3, metadata={"ge": 2})
    """Successive halving: keep 1 in this many trials at each interim evaluation."""
    p_threshold: float = field(default=0.1, metadata={"gt": 0.0, "lt": 1.0})
    """Wilcoxon pruner: prune once a trial is worse than the best one at this p-value (lower = surer, later)."""
    n_startup_steps: int = field(default=2, metadata={"ge": 0})
    """Wilcoxon pruner: per-example scores a trial reports before it can be pruned (examples, not training steps)."""
    study_name: str | None = None
    """Optuna study name in the storage; null = the sweep name."""
    storage: str | None = None
    """Optuna RDB storage URL; null = the results store, so one file holds both and optuna-dashboard opens it."""

    def target(self, sweep_name: str, store_url: str) -> tuple[str, str]:
        """(study name, storage URL) of the sweep's study: the nulls above resolved."""
        return self.study_name or sweep_name, self.storage or store_url


@dataclass(frozen=True)
class SearchConfig:
    type: Literal["grid", "optuna"] = "grid"
    """`grid`: one trial per combination of the `grid` values; `optuna`: a study over `space`."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted trial keys (`prompt`, `lora.rank`, `training.learning_rate`, ...) and the values to try."""
    space: dict[str, Dimension] = field(default_factory=dict)
    """Optuna search space over the same dotted keys a grid can sweep."""
    optuna: OptunaSettings = field(default_factory=OptunaSettings)
    """Sampler, budget, objectives and pruner of an `optuna` search."""
    baselines: bool = True
    """Also score each prompt zero-shot (no adapter), the reference every fine-tune is compared with."""

    @property
    def study(self) -> OptunaSettings | None:
        """The study's settings when this search is a study (`optuna`), None for a grid."""
        return self.optuna if self.type == "optuna" else None


@dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: int = field(default=1, metadata={"ge": 1})
    """CPUs reserved per trial; also its torch thread count. On CPU, 1 each runs more trials at once."""
    gpus_per_trial: float = field(default=1.0, metadata={"ge": 0.0})
    """GPUs per trial where the Ray cluster has GPUs (ignored without); 1 isolates each trial's memory."""
    trial_timeout_s: float | None = field(default=None, metadata={"gt": 0.0})
    """Longest a trial may run (from its worker's start); over it the worker is killed and the trial fails
    (it resumes from its last checkpoint on the next run). null = no limit."""
    stall_timeout_s: float | None = field(default=None, metadata={"gt": 0.0})
    """Longest a running trial may go without reporting anything (a step, a loss point, an eval); catches a
    deadlock or a stuck download. Set it above your longest eval. null = no limit."""
    retry_out_of_memory: bool = False
    """Re-run a trial that ran out of memory (GPU or host) once with half the micro batch and twice the
    gradient accumulation: same effective batch, slightly different numerics."""
    trials_per_worker: int | Literal["auto"] = field(default=1, metadata={"ge": 1})
    """Trials that share one worker's base model (a pack, trainer.lockstep): one copy of the base and one forward
    and backward of it for all, each trial its own adapter, optimizer, rows and results. 1 = each trial in its
    own worker (isolated); N = up to N compatible trials (trainer.packing) per worker; `auto` = on GPU workers,
    the ready compatible trials spread over the free workers (at most 8 each), on CPU workers 1 (packs measured
    slower there). An out-of-memory error splits a pack in halves, each continuing from its checkpoints."""


@dataclass(frozen=True)
class OutputConfig:
    run_dir: str = "runs"
    """Adapters, trial logs and TensorBoard events go under <run_dir>/<sweep name>/."""
    store: str | None = None
    """SQLAlchemy URL of the results store; null means sqlite:///<run_dir>/results.db."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI (sqlite:///runs/mlflow.db, http://host:5000): each sweep a parent run, each trial a
    child run, as a view of the store. null: $MLFLOW_TRACKING_URI when set, else no MLflow."""

    def store_url(self) -> str:
        return driver_url(self.store or f"sqlite:///{self.run_dir}/results.db")


def driver_url(url: str) -> str:
    """`postgresql://...` means psycopg (3), the driver the `postgres` extra installs (SQLAlchemy's default for
    the bare scheme is psycopg2); every other URL as given."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def store_url(given: str | None, output: OutputConfig | None = None) -> str:
    """The results store a command uses: `--store`, else $QLORA_SWEEP_STORE, else the spec's `output`, else
    sqlite:///runs/results.db (the default `output`'s)."""
    return driver_url(given or os.environ.get(STORE_ENV) or (output or OutputConfig()).store_url())


@dataclass(frozen=True)
class SweepSpec:
    name: str = ""
    """Sweep name, unique in the store; re-running the same name resumes it."""
    description: str = ""
    """Free text shown nowhere but here: what the sweep is meant to find out."""
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompt templates; each must contain `{dialogue}` and no other placeholder."""
    prompt: str | None = None
    """Prompt used when the grid does not sweep `prompt`; null with one template means that one."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


class SpecError(Exception):
    """Every problem of a spec at once; the CLI prints them and exits with code 2."""

    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source, self.problems = source, problems
        lines = [f"{source}: {len(problems)} problem(s); nothing was run or written:"]
        super().__init__("\n".join(lines + [f"  - {p.render()}" for p in problems]))


def to_plain(spec: SweepSpec) -> dict:
    return dataclasses.asdict(spec)
