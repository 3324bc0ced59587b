"""One trial as named steps: load -> adapt -> train -> evaluate -> save.

The trial knows nothing of Ray or the results store: it reports events through the `report`
callable it is given and returns a TrialResult. The orchestrator decides where both go.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback, set_seed

from evaluation import EvalResult, Scoring, evaluate
from evaluation.rouge import resolve_tokenizer
from trainer import checkpoints, heldout, prompts
from trainer.arguments import budget
from trainer.config import TrialConfig
from trainer.data import TrialData
from trainer.events import Budget, Checkpoint, Environment, Event, Metric, Phase, Scores, Step, TrialDiverged
from trainer.families import DECODER_ONLY, Family, family_of
from trainer.fourbit import DEQUANTIZED_MEMORY_SHARE, dequantized_base
from trainer.hardware import environment_record, peak_memory_mib, probe_device, resolve_precision
from trainer.lora_autocast import follow_cpu_autocast
from trainer.lora_merge import merged_adapters
from trainer.models import load_model, load_tokenizer, resolve_model_path
from trainer.prepacked import prepacked_linears
from trainer.result import TrialResult

EmitEvent = Callable[[Event], None]
"""How a trial reports each event to whoever runs it (a Ray queue, a test's list)."""


def run_trial(cfg: TrialConfig, data: TrialData, out_dir: Path, report: EmitEvent,
              num_threads: int | None = None) -> TrialResult:
    """Run one trial end to end and return its final metrics and predictions."""
    set_threads(num_threads)
    key = checkpoints.resume_key(cfg, data)  # of the config as submitted, as the Ray task computed it
    cfg, environment = resolve_device(cfg, report)
    set_seed(cfg.training.seed)  # LoRA init happens in adapt(), before SFTTrainer would seed
    timings: dict[str, float] = {}
    with _step(Step.LOAD, timings, report):
        tokenizer, model = load(cfg)
        family = family_of(model.config)
        evaluator = make_evaluator(cfg, tokenizer, data, family=family)
        interim = make_evaluator(cfg, tokenizer, data, cfg.training.interim_eval_examples, family=family)
    adapter_dir = None
    if not cfg.zero_shot:
        with _step(Step.ADAPT, timings, report):
            model = adapt(model, cfg, family)
        with _step(Step.TRAIN, timings, report):
            skipped, total_steps = train(model, tokenizer, cfg, data, out_dir, report, interim, key, family)
        # Rows whose summary alone does not fit max_seq_length: dropped, never truncated.
        report(Metric("train/skipped_examples", 0, float(skipped)))
    footprint = parameter_counts(model, trained=not cfg.zero_shot)
    with _step(Step.EVALUATE, timings, report):
        result = evaluator(model)
        report_eval(report, result, 0 if cfg.zero_shot else total_steps)
    if not cfg.zero_shot:
        with _step(Step.SAVE, timings, report):
            adapter_dir = save(model, out_dir)
            if not cfg.training.keep_final_checkpoint:
                checkpoints.remove_checkpoints(out_dir)
    footprint["saved_mib"] = folder_mib(adapter_dir)
    environment.update(peak_memory_mib(), attention=getattr(model.config, "_attn_implementation", None))
    return TrialResult({**result.metrics, **footprint}, result.predictions, adapter_dir, timings, result.scoring,
                       environment)


def resolve_device(cfg: TrialConfig, report: EmitEvent, device=None) -> tuple[TrialConfig, dict]:
    """Measure this worker's device (unless given, already measured), resolve `compute_dtype: auto` on it, and
    report both once."""
    device = device or probe_device()
    precision = resolve_precision(cfg.quantization.compute_dtype, device)
    environment = environment_record(device, precision)
    if precision.note:
        print(f"WARNING: {precision.note}", flush=True)  # the trial log; `sweep status` shows it too
    report(Environment(environment))
    quantization = dataclasses.replace(cfg.quantization, compute_dtype=precision.dtype)
    return dataclasses.replace(cfg, quantization=quantization), environment


def load(cfg: TrialConfig):
    path = resolve_model_path(cfg.model.name)
    return load_tokenizer(path), load_model(path, cfg.quantization, cfg.training.max_seq_length)


def adapt(model, cfg: TrialConfig, family: Family = DECODER_ONLY):
    """Wrap the base model in LoRA adapters; base weights stay frozen (and 4-bit under nf4). A full fine-tune
    trains the model as it is: every weight."""
    from peft import get_peft_model

    if cfg.training.method == "full":
        model.requires_grad_(True)
        return model
    # Not prepare_model_for_kbit_training: it upcasts every non-4-bit weight (embeddings, 49k-vocab
    # head) to float32, which costs speed on CPU; PEFT keeps the adapter weights in float32 anyway.
    model = get_peft_model(model, lora_config(cfg, family))
    follow_cpu_autocast(model)  # no float32 round trip of the adapters' inputs under CPU autocast
    return model


def lora_config(cfg: TrialConfig, family: Family = DECODER_ONLY):
    """The trial's PEFT LoraConfig, with its model family's task type."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.effective_alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type=family.lora_task_type,
                      use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora)


def train(model, tokenizer, cfg: TrialConfig, data: TrialData, out_dir: Path, report: EmitEvent,
          evaluator: Callable[[object], EvalResult], resume_key: str = "",
          family: Family = DECODER_ONLY) -> tuple[int, int]:
    """Fine-tune on summary tokens only, from the last complete checkpoint of the same `resume_key` when there
    is one; returns how many training rows were skipped as too long, and the optimizer steps taken. The rows and
    the trainer are the model family's (trainer.families: SFTTrainer or Seq2SeqTrainer)."""
    checkpoints.seed_warm_start(out_dir, cfg.warm_start, resume_key)
    resume, step = checkpoints.last_checkpoint(out_dir, resume_key)
    reporter = ReportCallback(report, evaluator, cfg.training.eval_interval_steps)
    if resume is not None:
        print(f"resuming from the checkpoint of step {step}: {resume}", flush=True)
        reporter.replay(checkpoints.reported_points(resume))
    callbacks = [reporter, CheckpointCallback(resume_key, reporter.points, report, cfg.training.keep_final_checkpoint)]
    rows, skipped = family.training_rows(cfg, tokenizer, data)
    total_steps = budget(cfg, len(rows))
    trainer = family.trainer(model, tokenizer, cfg, rows, out_dir, total_steps, callbacks)
    report(Budget(total_steps))  # the driver's per-trial progress: an epoch budget is known only here
    # The frozen 4-bit base dequantized once, not at every call (trainer.fourbit); a full disk named as such.
    with dequantized_base(model), checkpoints.disk_full_named(out_dir, lambda: trainer.state.global_step):
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return skipped, total_steps


@dataclass(frozen=True)
class EvalSet:
    """One trial's eval rows, encoded once: the prompts to generate from, the references, the held-out pairs."""

    texts: list[str]
    references: list[tuple[str, ...]]
    ids: list[str]
    pairs: list[heldout.Pair]
    add_special: bool
    """Whether the tokenizer adds special tokens (the chat template already wrote them)."""
    how: Scoring


def eval_set(cfg: TrialConfig, tokenizer, data: TrialData, limit: int | None = None,
             family: Family = DECODER_ONLY) -> EvalSet:
    """The first `limit` (default all) eval rows of `data` as `cfg` prompts them."""
    rows = data.eval[:limit]
    references = [e.references or (e.summary,) for e in rows]
    return EvalSet(eval_prompts(cfg, tokenizer, rows), references, [e.id for e in rows],
                   heldout.heldout_pairs(cfg, tokenizer, family, [e.dialogue for e in rows], references),
                   not prompts.uses_chat(cfg, tokenizer), scoring(cfg, data))


def make_evaluator(cfg: TrialConfig, tokenizer, data: TrialData, limit: int | None = None,
                   family: Family = DECODER_ONLY) -> Callable[[object], EvalResult]:
    """A function model -> EvalResult over the first `limit` (default all) eval rows, built once: ROUGE of the
    generated summaries, and the held-out loss of the references (`eval_loss`)."""
    rows = eval_set(cfg, tokenizer, data, limit, family)
    g = cfg.generation

    def run(model) -> EvalResult:
        with eval_mode(model):
            # The held-out loss continues from the prompts generation has just read (no second prefill).
            loss = heldout.HeldoutLoss(model, rows.pairs, len(rows.ids), g.eval_batch_size, tokenizer.pad_token_id,
                                       whole=family.whole_losses)
            result = evaluate(model, tokenizer, rows.texts, rows.references, rows.ids, g.max_new_tokens,
                              g.eval_batch_size, rows.add_special, rows.how, g.generate_kwargs(), loss.from_prefill)
            return with_heldout_loss(result, loss.losses())

    return run


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Eval mode, with the frozen 4-bit base dequantized once rather than at every token, the adapter merged
    into it (trainer.lora_merge), and bfloat16 weights packed once for oneDNN (trainer.prepacked); the mode it
    was in after."""
    was_training = model.training
    model.eval()
    try:
        with dequantized_base(model), merged_adapters(model), prepacked_linears(model, DEQUANTIZED_MEMORY_SHARE):
            yield
    finally:
        model.train(was_training)


def with_heldout_loss(result: EvalResult, losses: list[float | None]) -> EvalResult:
    """The result with `eval_loss` per example (where a reference fitted) and as their mean."""
    scored = [loss for loss in losses if loss is not None]
    predictions = [p if loss is None else {**p, "eval_loss": loss} for p, loss in zip(result.predictions, losses)]
    metrics = {**result.metrics, "eval_loss": sum(scored) / len(scored)} if scored else result.metrics
    scoring = {**result.scoring, "eval_loss": "teacher-forced cross-entropy, summary tokens, mean over references"}
    return dataclasses.replace(result, metrics=metrics, predictions=predictions, scoring=scoring)


def scoring(cfg: TrialConfig, data: TrialData) -> Scoring:
    """The ROUGE settings, the tokenizer resolved on every eval reference (interim evals use the same)."""
    texts = [r for e in data.eval for r in e.references]
    return Scoring(resolve_tokenizer(cfg.scoring.tokenizer, texts), cfg.scoring.references, cfg.scoring.stemming,
                   data.reference_columns, cfg.scoring.bertscore_model, cfg.generation.describe())


def eval_prompts(cfg: TrialConfig, tokenizer, rows: list) -> list[str]:
    """Prompt texts of eval rows, dialogues cut so that prompt + max_new_tokens fit max_seq_length."""
    room = cfg.training.max_seq_length - cfg.generation.max_new_tokens
    return [prompts.prompt_text(cfg, tokenizer, prompts.fit_dialogue(cfg, tokenizer, e.dialogue, room) or "")
            for e in rows]


def save(model, out_dir: Path) -> str:
    """The adapter (a PeftModel saves only it, ~MBs), or the whole model after a full fine-tune."""
    folder = out_dir / ("adapter" if hasattr(model, "peft_config") else "model")
    model.save_pretrained(folder)
    return str(folder)


def parameter_counts(model, trained: bool) -> dict[str, float]:
    """Trainable and total parameters (a 4-bit weight counts as its unpacked size, as PEFT counts it); a
    zero-shot run trains none."""
    import torch

    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:  # bitsandbytes packs two 4-bit weights in each uint8
        total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": float(trainable if trained else 0), "total_params": float(total)}


def folder_mib(folder: str | None) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20 if folder else 0.0


class ReportCallback(TrainerCallback):
    """Streams train loss / learning rate, and interim evaluations, through `report`; keeps what it reported
    in `points`, for the checkpoints."""

    def __init__(self, report: EmitEvent, evaluator: Callable[[object], EvalResult], eval_interval_steps: int):
        self.evaluator, self.interval, self.points = evaluator, eval_interval_steps, []

        def report_and_keep(event: Event) -> None:
            self.points.append(event)
            report(event)

        self.report = report_and_keep

    def replay(self, points: list[Event]) -> None:
        """Report again what a checkpoint's attempt had reported up to it."""
        for event in points:
            self.report(event)

    def on_log(self, args, state, control, logs=None, **kwargs):
        report_train_point(self.report, state.global_step, logs or {})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.interval and step % self.interval == 0 and step < state.max_steps:
            result = self.evaluator(model)
            report_eval(self.report, result, step)
            report_scores(self.report, result, step)


class CheckpointCallback(TrainerCallback):
    """After the Trainer saved a checkpoint: mark it complete, with the points reported so far, and say so."""

    def __init__(self, resume_key: str, points: list[Event], report: EmitEvent, keep_final: bool = False):
        self.resume_key, self.points, self.report, self.keep_final = resume_key, points, report, keep_final

    def on_step_end(self, args, state, control, **kwargs):
        if self.keep_final and state.global_step >= state.max_steps:
            control.should_save = True  # training.keep_final_checkpoint: `sweep extend` continues from here
        return control

    def on_save(self, args, state, control, **kwargs):
        seal_checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.resume_key, self.points,
                        self.report, state.global_step)


TRAIN_POINTS = ("loss", "learning_rate", "grad_norm")
"""What a trial logs every `training.logging_steps`, alone (the Trainer's logs) or in a pack (its own step)."""


def report_train_point(report: EmitEvent, step: int, logged: dict) -> None:
    """One logged point of training as `train/<name>` metrics, alone or in a pack; a non-finite value ends the
    trial once the point is reported (every later step would be wasted): TrialDiverged names the first."""
    values = {name: float(logged[name]) for name in TRAIN_POINTS if name in logged}
    for name, value in values.items():
        report(Metric(f"train/{name}", step, value))
    broken = [(name, value) for name, value in values.items() if not math.isfinite(value)]
    if broken:
        raise TrialDiverged(f"diverged at step {step} ({broken[0][0]} {broken[0][1]})")


def seal_checkpoint(folder: Path, resume_key: str, points: list[Event], report: EmitEvent, step: int) -> None:
    """A checkpoint written alone (by the Trainer) or in a pack, marked complete with the points reported so far
    (trainer.checkpoints), then announced; the announcement is not among `points`: an attempt replays curve
    points only."""
    checkpoints.mark_complete(folder, resume_key, points)
    report(Checkpoint(step))


def report_scores(report: EmitEvent, result: EvalResult, step: int) -> None:
    """Each interim metric's per-example scores, in eval-example order: what the Wilcoxon pruner pairs."""
    for name in result.metrics:
        values = [row[name] for row in result.predictions if name in row]
        if len(values) == len(result.predictions) > 0:
            report(Scores(f"eval/{name}", step, tuple(float(v) for v in values)))


def report_eval(report: EmitEvent, result: EvalResult, step: int) -> None:
    for name, value in result.metrics.items():
        report(Metric(f"eval/{name}", step, float(value)))
    broken = {name: value for name, value in result.metrics.items() if not math.isfinite(value)}
    if broken:
        name, value = next(iter(broken.items()))
        raise TrialDiverged(f"diverged at step {step} ({name} {value})")


@contextmanager
def _step(step: Step, timings: dict[str, float], report: EmitEvent) -> Iterator[None]:
    report(Phase(step))
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step.value] = time.perf_counter() - start


def set_threads(num_threads: int | None) -> None:
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)  # match the CPUs this trial was given: no oversubscription
