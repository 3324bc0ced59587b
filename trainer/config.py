"""Typed configuration of one trial.

Every section is a frozen dataclass with a docstring per field. Field metadata carries the
per-field invariant (`ge`, `gt`) that the spec loader checks; `problems()` methods carry the
cross-field invariants. The orchestrator builds these from YAML; the trainer only reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from trainer.datafiles import known_encoding

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"
PROMPT_PLACEHOLDER = "dialogue"
DEFAULT_MAX_STEPS = 32
DEFAULT_PARAPHRASE_PROMPT = ("Rewrite the following sentence in other words, keeping its meaning, names and "
                             "numbers. Reply with the rewritten sentence only.\n\nSentence: {text}")
# Field metadata read by trainer.identity (never restated elsewhere):
# - "baseline": True when the setting changes what a zero-shot run computes (the model, the prompt, the eval data,
#   generation, scoring, the sequence length); the deepest marked field or section decides, unmarked is False.
# - "since": the setting was added after trials were stored (the day it came); left at its default it is not part
#   of a trial's identity, so a stored trial keeps its key (and is reused) after an upgrade.
# - "identity": False when the setting changes nothing a trial computes (what it keeps on disk): never in its key.
SINCE_AUGMENTATION = "2026-11-24"
SINCE_STEERING = "2026-12-02"
# Keys that exclude each other (key -> the other key, its cleared value); read through `cleared_by` only.
_EXCLUSIVE_KEYS = {"training.max_steps": ("training.epochs", None), "training.epochs": ("training.max_steps", None),
                   "training.warmup_steps": ("training.warmup_ratio", None),
                   "training.warmup_ratio": ("training.warmup_steps", 0)}
# bitsandbytes' paged optimizers page their state between GPU and host memory; a CPU has nothing to page.
PAGED_OPTIMIZERS = ("paged_adamw_8bit", "paged_adamw_32bit")


def cleared_by(dotted: str, value: object) -> tuple[str, object] | None:
    """(the other key, its cleared value) when setting `dotted` to `value` clears an exclusive partner: a grid
    value, a study proposal or a `--set` of `training.epochs` replaces the spec's `max_steps`, and so on."""
    return _EXCLUSIVE_KEYS.get(dotted) if value is not None else None


def paged_optimizer_problem(path: str, optimizer: str, no_gpu_because: str) -> ConfigProblem | None:
    """The one refusal of a paged optimizer where a trial gets no GPU (the spec, the cluster, the worker say
    why in `no_gpu_because`); None for any other optimizer."""
    if optimizer not in PAGED_OPTIMIZERS:
        return None
    return ConfigProblem(path, f"a paged optimizer pages its state out of GPU memory, and {no_gpu_because}",
                         optimizer, "adamw, adamw_8bit", "set training.optimizer: adamw_8bit, or give trials a GPU")


@dataclass(frozen=True)
class ConfigProblem:
    """One violated invariant: where, what must hold, what was given, what is allowed, how to fix."""

    path: str
    invariant: str
    given: object
    allowed: str
    fix: str = ""

    def render(self) -> str:
        text = f"{self.path}: {self.invariant}; given {self.given!r}; allowed: {self.allowed}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class ModelConfig:
    name: str = EMBEDDED_MODEL_ALIAS
    """HF hub id, local model directory, or the embedded alias `smollm2-135m-instruct`."""
    use_chat_template: bool = True
    """Wrap prompt and summary in the tokenizer's chat template when it has one."""
    system_prompt: str | None = None
    """System message for chat models; null keeps the template's own default."""


@dataclass(frozen=True)
class DatasetConfig:
    name: str | None = "dialogsum"
    """Named preset (`dialogsum`, `samsum`); null to read `train_file` and `eval_file` instead."""
    mirror_dir: str | None = None
    """Directory holding `<name>/<split>.jsonl`; null uses $QLORA_SWEEP_DATA_DIR, then the hub."""
    train_file: str | None = field(default=None, metadata={"baseline": False})
    """Local JSONL or CSV file with training rows (used when `name` is null)."""
    eval_file: str | None = None
    """Local JSONL or CSV file with evaluation rows (used when `name` is null)."""
    train_split: str = field(default="validation", metadata={"baseline": False})
    """Split of the preset to train on (the local DialogSum mirror has no train split)."""
    eval_split: str = "test"
    """Split of the preset to evaluate on; never overlaps the training split."""
    dialogue_column: str = "dialogue"
    """Column holding the dialogue text."""
    summary_column: str = "summary"
    """Column holding the training target; in the eval split the first reference column."""
    reference_columns: list[str] | None = None
    """Eval reference columns, all scored (see scoring.references); null: `summary_column`, else
    `summary1`, `summary2`, ..."""
    train_examples: int = field(default=128, metadata={"ge": 1, "baseline": False})
    """Training rows used (a fixed seeded sample); more rows cost nothing per step, only variety."""
    eval_examples: int = field(default=40, metadata={"ge": 1})
    """Evaluation rows (a fixed seeded subset); each costs one generation per trial."""
    sample_seed: int = 0
    """Seed of the train sample and the eval subset, shared by every trial so scores compare."""
    empty_rows: Literal["skip", "error"] = "skip"
    """Rows with an empty or missing dialogue, training summary or every reference: skipped (and
    counted in the sweep's notes) before sampling, or an error naming the first such row."""
    encoding: str | None = field(default=None, metadata={"identity": False, "baseline": False})
    """Text encoding of the data files, e.g. cp949 (Korean Windows) or cp1252; null reads UTF-8, with or without
    a byte-order mark, and detects any other (charset-normalizer; `sweep plan` names what it chose). The rows
    decoded, not this key, are part of a trial's identity."""
    eval_overlap: Literal["refuse", "allow"] = field(default="refuse", metadata={"identity": False, "baseline": False})
    """Eval rows whose dialogue (whitespace normalised) is also a training row's: `refuse` stops validate, plan
    and run, naming them; `allow` scores them anyway (their scores then partly measure memorisation) and the
    leaderboard header says how many."""

    def problems(self, path: str) -> list[ConfigProblem]:
        if self.name is None and not (self.train_file and self.eval_file):
            return [ConfigProblem(path, "a dataset needs a preset `name` or both `train_file` and `eval_file`",
                                  {"name": None, "train_file": self.train_file, "eval_file": self.eval_file},
                                  "name: dialogsum|samsum, or two local .jsonl/.csv files",
                                  "set dataset.name or dataset.train_file and dataset.eval_file")]
        if self.encoding is not None and not known_encoding(self.encoding):
            return [ConfigProblem(f"{path}.encoding", "must name a text encoding Python knows", self.encoding,
                                  "utf-8, cp949, euc-kr, cp1252, utf-16, ... (Python's codec names)",
                                  "fix the name, or set encoding: null to detect it")]
        if self.name is not None and self.train_split == self.eval_split and not self.train_file:
            return [ConfigProblem(f"{path}.eval_split", "the eval split must differ from the train split",
                                  self.eval_split, f"any split but {self.train_split!r}",
                                  "evaluate on held-out rows, e.g. eval_split: test")]
        return []


@dataclass(frozen=True)
class LoraSettings:
    rank: int = field(default=8, metadata={"ge": 1})
    """LoRA rank r: more capacity and adapter size per step, little extra compute."""
    alpha: int | None = field(default=None, metadata={"ge": 1})
    """LoRA alpha (scale = alpha / rank); null means 2 x rank, so the scale stays fixed across ranks."""
    dropout: float = field(default=0.05, metadata={"ge": 0.0, "lt": 1.0})
    """Dropout on the LoRA input; regularizes tiny datasets, slows convergence."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: `all-linear` or a list of module names such as [q_proj, v_proj]."""
    use_rslora: bool = False
    """Rank-stabilized LoRA (PEFT's flag): scale alpha / sqrt(rank) instead of alpha / rank, so higher ranks
    keep learning; with it, compare ranks at a fixed alpha."""
    use_dora: bool = False
    """DoRA (PEFT's flag): learns each weight's magnitude apart from its direction. Often a little better at low
    rank; slower per step (on a 4-bit base it dequantizes the weight in every forward pass)."""

    @property
    def effective_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.rank


@dataclass(frozen=True)
class QuantizationConfig:
    mode: Literal["nf4", "fp4", "int8", "none"] = "nf4"
    """Base weights as bitsandbytes stores them. `nf4`: 4-bit NormalFloat (QLoRA; ~0.5 byte/param, the best 4-bit
    quality); `fp4`: 4-bit float, same memory, usually a little worse; `int8`: LLM.int8() (~1 byte/param, closest
    to full precision, slower matmuls, computes in float16); `none`: full precision (2-4 bytes/param). A checkpoint
    saved quantized (a `...-bnb-4bit` repo) loads as it is, and this must name its mode."""
    double_quant: bool = True
    """Quantize the quantization constants too: ~0.4 bit/param less memory, negligible cost."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Dtype of the 4-bit matmuls and the base model. `auto` is resolved by each trial on its own device
    (trainer.hardware): bfloat16 on a GPU or CPU that runs it natively, float16 on a GPU without bf16,
    float32 on a CPU that would emulate bf16 (tens of times slower). An explicit dtype is honoured."""


@dataclass(frozen=True)
class TrainingConfig:
    method: Literal["lora", "full"] = "lora"
    """`lora`: train adapters on a frozen (4-bit under nf4) base, MBs to save; `full`: train every weight of a
    full-precision base (quantization.mode: none), the whole model to save and ~3x its size in optimizer state."""
    max_steps: int | None = field(default=None, metadata={"ge": 1})
    """Optimizer steps per trial: the same budget for every trial whatever its data. Give it or `epochs`, not
    both; neither means 32."""
    epochs: float | None = field(default=None, metadata={"gt": 0.0, "since": SINCE_AUGMENTATION})
    """Passes over the training rows instead of max_steps (may be fractional): steps = ceil(epochs x
    ceil(rows / micro_batch_size / gradient_accumulation_steps)), counted by each trial on the rows that fit, so
    augmentation lengthens training. Suits full-dataset runs; max_steps suits equal-cost grids."""
    micro_batch_size: int = field(default=2, metadata={"ge": 1})
    """Examples per forward pass; the memory knob (batch 1 + accumulation fits 24 GB for 10B models)."""
    gradient_accumulation_steps: int = field(default=2, metadata={"ge": 1})
    """Micro batches per optimizer step; effective batch = micro_batch_size x this, at no memory cost."""
    learning_rate: float = field(default=2e-4, metadata={"gt": 0.0})
    """Peak AdamW learning rate of the LoRA weights."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule over max_steps."""
    warmup_steps: int = field(default=0, metadata={"ge": 0})
    """Linear warm-up steps at the start of the schedule."""
    warmup_ratio: float | None = field(default=None, metadata={"ge": 0.0, "lt": 1.0, "since": SINCE_AUGMENTATION})
    """Warm-up as a share of the trial's steps (rounded up), instead of warmup_steps; follows an epoch budget.
    ~0.03 is common; 0 or null = no warm-up."""
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = field(
        default="adamw", metadata={"since": SINCE_AUGMENTATION})
    """`adamw`: torch's AdamW, state 8 bytes per trained weight. `adamw_8bit`: bitsandbytes' 8-bit AdamW, ~2
    bytes; matters for full fine-tunes, hardly for LoRA. `paged_*`: bitsandbytes pages the state to host memory
    when the GPU runs out (GPU only; refused for CPU trials)."""
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0.0})
    """Clip the gradient's global norm to this before each update; 0 = no clipping. Guards against a bad batch;
    too low slows learning."""
    weight_decay: float = field(default=0.0, metadata={"ge": 0.0})
    """AdamW's decoupled weight decay on the trained weights; 0.01-0.1 regularizes long runs, 0 suits short ones."""
    max_seq_length: int = field(default=384, metadata={"ge": 32, "baseline": True})
    """Tokens per training example; the dialogue is truncated to fit, never the summary."""
    seed: int = 42
    """Seed of LoRA init and data order; the same across trials so only the swept keys differ."""
    eval_interval_steps: int = field(default=0, metadata={"ge": 0})
    """Run the ROUGE evaluation every N steps as well as at the end (0: only at the end); pruners need it."""
    interim_eval_examples: int | None = field(default=None, metadata={"ge": 1})
    """Eval rows scored by the interim evaluations (the first N); null = all. Fewer = cheaper, noisier pruning."""
    logging_steps: int = field(default=1, metadata={"ge": 1})
    """Report train loss and learning rate every N optimizer steps."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: ~30% slower, much less activation memory."""
    checkpoint_interval_steps: int = field(default=0, metadata={"ge": 0})
    """Save a resumable checkpoint (adapter, optimizer, scheduler, RNG, data position) every N optimizer steps;
    0 = none. Each costs one write of the adapter and its optimizer state; a trial that is killed, stopped, timed
    out or retried continues from the last one on the next `sweep run`."""
    keep_final_checkpoint: bool = field(default=False, metadata={"identity": False})
    """Keep the checkpoint of the last step after the trial ends, so `sweep extend` can continue it and
    `sweep clone --warm-start` can fork it. Costs the adapter plus its optimizer state on disk (about 3x the
    adapter's size with AdamW) per finished trial."""

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None:
            object.__setattr__(self, "max_steps", DEFAULT_MAX_STEPS)

    def total_steps(self, train_rows: int) -> int:
        """Optimizer steps over `train_rows` rows, as transformers' Trainer counts an epoch budget."""
        if self.max_steps is not None:
            return self.max_steps
        batches = math.ceil(train_rows / self.micro_batch_size)
        return math.ceil(self.epochs * max(math.ceil(batches / self.gradient_accumulation_steps), 1))

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps of a trial of `total_steps` steps."""
        return math.ceil(total_steps * self.warmup_ratio) if self.warmup_ratio else self.warmup_steps

    def problems(self, path: str) -> list[ConfigProblem]:
        out = []
        if self.max_steps is not None and self.epochs is not None:
            out.append(ConfigProblem(f"{path}.epochs", "the budget is max_steps or epochs, not both",
                                     {"max_steps": self.max_steps, "epochs": self.epochs}, "exactly one of the two",
                                     "remove one of them (a grid value or --set of one replaces the other)"))
        if self.warmup_ratio is not None and self.warmup_steps:
            out.append(ConfigProblem(f"{path}.warmup_ratio", "warm-up is warmup_steps or warmup_ratio, not both",
                                     {"warmup_steps": self.warmup_steps, "warmup_ratio": self.warmup_ratio},
                                     "one of the two", "remove one"))
        if self.max_steps is not None:
            out += self.step_problems(path, self.max_steps)
        if self.interim_eval_examples is not None and self.eval_interval_steps == 0:
            out.append(ConfigProblem(f"{path}.interim_eval_examples", "sizes interim evaluations, and there are none "
                                     "(eval_interval_steps: 0), so it would be ignored", self.interim_eval_examples,
                                     "null, or set eval_interval_steps", "remove it, or set eval_interval_steps"))
        return out

    def step_problems(self, path: str, total_steps: int, where: str = "") -> list[ConfigProblem]:
        """Invariants that need the step count: from max_steps at load, from the data for an epoch budget."""
        out = []
        if self.warmup(total_steps) >= total_steps:
            key = "warmup_ratio" if self.warmup_ratio else "warmup_steps"
            out.append(ConfigProblem(f"{path}.{key}{where}", f"warm-up must end before training does "
                                     f"({total_steps} steps)", self.warmup(total_steps), f"0 to {total_steps - 1}",
                                     "lower the warm-up or raise the budget"))
        if self.logging_steps > total_steps:
            out.append(ConfigProblem(f"{path}.logging_steps{where}", f"at least one training loss point must be "
                                     f"logged ({total_steps} steps)", self.logging_steps, f"1 to {total_steps}",
                                     "lower logging_steps"))
        return out


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = field(default=64, metadata={"ge": 1})
    """Generated summary length cap in tokens; DialogSum references average ~25 words."""
    eval_batch_size: int = field(default=8, metadata={"ge": 1})
    """Prompts generated together (left padded); larger is faster until memory runs out."""
    num_beams: int = field(default=1, metadata={"ge": 1})
    """1 = greedy. More beams search for a likelier summary: often longer and more fluent, costs ~N x compute."""
    no_repeat_ngram_size: int = field(default=0, metadata={"ge": 0})
    """Never repeat an n-gram of this size (3 is common for summaries); 0 = off. Stops loops, can block names."""
    repetition_penalty: float = field(default=1.0, metadata={"gt": 0.0})
    """> 1 discourages tokens already generated (1.2 is mild); 1 = off. Too high garbles names and numbers."""
    length_penalty: float = field(default=1.0)
    """Beam search only: > 1 favours longer beams, < 1 shorter ones; 1 = neutral."""
    min_new_tokens: int = field(default=0, metadata={"ge": 0})
    """No end of summary before this many tokens; 0 = off. Prevents empty outputs, can pad short ones."""

    def generate_kwargs(self) -> dict:
        """The options that differ from greedy, as `model.generate` takes them (defaults are left out)."""
        defaults = GenerationConfig()
        names = ("num_beams", "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "min_new_tokens")
        return {n: getattr(self, n) for n in names if getattr(self, n) != getattr(defaults, n)}

    def describe(self) -> str:
        """How summaries were decoded, for the scoring provenance: results decoded differently never rank together."""
        how = [f"beam search ({self.num_beams} beams)" if self.num_beams > 1 else "greedy"]
        how += [f"{k} {v:g}" for k, v in self.generate_kwargs().items() if k != "num_beams"]
        return ", ".join(how + [f"max {self.max_new_tokens} new tokens"])

    def problems(self, path: str) -> list[ConfigProblem]:
        out = []
        if self.min_new_tokens > self.max_new_tokens:
            out.append(ConfigProblem(f"{path}.min_new_tokens", "the minimum length must not exceed the maximum",
                                     self.min_new_tokens, f"0 to {self.max_new_tokens}", "lower min_new_tokens"))
        if self.length_penalty != 1.0 and self.num_beams == 1:
            out.append(ConfigProblem(f"{path}.length_penalty", "only beam search uses it, and num_beams is 1, so it "
                                     "would be ignored", self.length_penalty, "1.0, or set num_beams > 1",
                                     "set num_beams (e.g. 4) or remove length_penalty"))
        return out


@dataclass(frozen=True)
class AugmentationConfig:
    speaker_swap: float = field(default=0.0, metadata={"ge": 0.0, "le": 1.0})
    """Share of training rows added once more with their speakers exchanged (consistently in dialogue and
    summary); 0 = none. Teaches who-did-what rather than names; the eval split is never augmented."""
    paraphrase: float = field(default=0.0, metadata={"ge": 0.0, "le": 1.0, "since": SINCE_AUGMENTATION})
    """Share of training rows added once more with the dialogue paraphrased turn by turn by `paraphrase_model`
    (speaker tags and summary kept); 0 = none. More wording variety; a weak generator adds noise. Generated once
    per sweep on the driver before the trials, and cached by content."""
    paraphrase_model: str | None = field(default=None, metadata={"since": SINCE_AUGMENTATION})
    """The paraphrasing causal LM: a local folder, `smollm2-135m-instruct`, or a hub id; needed when paraphrase
    > 0. Its identity, the prompt and the seed are stored with the sweep."""
    paraphrase_prompt: str = field(default=DEFAULT_PARAPHRASE_PROMPT, metadata={"since": SINCE_AUGMENTATION})
    """What the generator is asked, once per turn; `{text}` is the turn's text. Write it in the data's language
    (an English request makes many models answer in English)."""
    seed: int = 0
    """Which rows are swapped or paraphrased, and the paraphrases' sampling seed."""

    def problems(self, path: str) -> list[ConfigProblem]:
        out = []
        if self.paraphrase > 0 and not self.paraphrase_model:
            out.append(ConfigProblem(f"{path}.paraphrase_model", "paraphrasing needs a generator", None,
                                     "a local causal LM folder, smollm2-135m-instruct, or a hub id",
                                     "set augmentation.paraphrase_model, or paraphrase: 0"))
        if "{text}" not in self.paraphrase_prompt:
            out.append(ConfigProblem(f"{path}.paraphrase_prompt", "the request must contain the turn",
                                     self.paraphrase_prompt, "text with a {text} placeholder",
                                     "add {text} where the turn goes"))
        return out


@dataclass(frozen=True)
class ScoringConfig:
    tokenizer: Literal["auto", "ascii", "unicode", "korean"] = "auto"
    """`ascii` is rouge-score's own (it deletes non-ASCII letters, so it is refused on such text);
    `unicode` keeps every script (one token per CJK character); `korean` scores morphemes (kiwipiepy's
    analyzer, as Korean summarization tasks do: Korean attaches particles and endings to words, so whole-word
    tokens rarely match); `auto` picks korean when most letters of the references are Hangul, ascii for
    ASCII-only references, else unicode. The one used is recorded with every result."""
    references: Literal["max", "mean", "first"] = "max"
    """Several references per example: score against the best-matching one (max, rouge-score's
    score_multi), their mean, or the first only."""
    stemming: bool = True
    """Porter stemming of English words longer than 3 letters (summaries ~ summary); no effect on other scripts."""
    bertscore_model: str | None = None
    """Encoder for BERTScore P/R/F1 next to ROUGE: a local folder or a hub id (roberta-large for English,
    klue/bert-base for Korean); null = off. Costs one encoder pass per prediction and reference."""


@dataclass(frozen=True)
class WarmStart:
    """Where a cloned or extended trial starts: a snapshot of its parent's complete checkpoint."""

    checkpoint: str = ""
    """The snapshot folder (`<trial dir>/fork/checkpoint-<step>`), taken when the clone was made."""
    step: int = 0
    """The parent's optimizer step at the snapshot: the child's steps continue from it."""
    parent_key: str = ""
    """The parent's content key: part of the child's, so a warm clone is never mistaken for a cold one."""
    fresh_optimizer: bool = False
    """Start the optimizer and learning-rate schedule again (a training key changed: an LR change re-warms)."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: the spec's defaults with one grid point applied. Field metadata `baseline`
    marks what its zero-shot baseline shares with it (trainer.identity.zero_shot_config)."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"baseline": True})
    dataset: DatasetConfig = field(default_factory=DatasetConfig, metadata={"baseline": True})
    prompt: str = field(default="", metadata={"baseline": True})
    """Name of the prompt template."""
    prompt_template: str = field(default="", metadata={"baseline": True})
    """The template itself; `{dialogue}` is replaced by the (truncated) dialogue."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig, metadata={"baseline": True})
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"baseline": True})
    scoring: ScoringConfig = field(default_factory=ScoringConfig, metadata={"baseline": True})
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    zero_shot: bool = False
    """True for a baseline: no adapter, no training, only the evaluation."""
    warm_start: WarmStart | None = field(default=None, metadata={"since": SINCE_STEERING})
    """Set by `sweep clone --warm-start` and `sweep extend`, never by a spec: start from another trial's
    checkpoint (adapter, data position, step count)."""

    def problems(self) -> list[ConfigProblem]:
        """Cross-field invariants of one run; checked on every grid point and every study proposal."""
        t, g = self.training, self.generation
        out = self.dataset.problems("dataset") + t.problems("training") + g.problems("generation")
        out += self.augmentation.problems("augmentation")
        if t.method == "full" and self.quantization.mode != "none":
            out.append(ConfigProblem("training.method", "a full fine-tune trains every weight, and quantized "
                                     "weights cannot be trained", f"full with quantization.mode {self.quantization.mode}",
                                     "lora with nf4, or full with quantization.mode: none",
                                     "set quantization.mode: none (or method: lora)"))
        if g.max_new_tokens >= t.max_seq_length:
            out.append(ConfigProblem("generation.max_new_tokens", "the summary budget must leave room for the "
                                     "dialogue inside training.max_seq_length", g.max_new_tokens,
                                     f"< {t.max_seq_length}", "lower max_new_tokens or raise max_seq_length"))
        return out
