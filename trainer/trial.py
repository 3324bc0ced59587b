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
from trainer.augment import training_examples
from trainer.config import TrialConfig, paged_optimizer_problem
from trainer.data import TrialData
from trainer.events import Budget, Checkpoint, Environment, Event, Metric, Phase, Scores, Step, TrialDiverged
from trainer.fourbit import dequantized_base
from trainer.lora_merge import merged_adapters
from trainer.hardware import environment_record, peak_memory_mib, probe_device, resolve_precision
from trainer.models import load_model, load_tokenizer, resolve_model_path
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
        seq2seq = model.config.is_encoder_decoder
        evaluator = make_evaluator(cfg, tokenizer, data, encoder_decoder=seq2seq)
        interim = make_evaluator(cfg, tokenizer, data, cfg.training.interim_eval_examples, encoder_decoder=seq2seq)
    adapter_dir = None
    if not cfg.zero_shot:
        with _step(Step.ADAPT, timings, report):
            model = adapt(model, cfg)
        with _step(Step.TRAIN, timings, report):
            skipped, total_steps = train(model, tokenizer, cfg, data, out_dir, report, interim, key)
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
    environment.update(peak_memory_mib())
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
    return load_tokenizer(path), load_model(path, cfg.quantization)


def adapt(model, cfg: TrialConfig):
    """Wrap the base model in LoRA adapters; base weights stay frozen (and 4-bit under nf4). A full fine-tune
    trains the model as it is: every weight."""
    from peft import get_peft_model

    if cfg.training.method == "full":
        model.requires_grad_(True)
        return model
    # Not prepare_model_for_kbit_training: it upcasts every non-4-bit weight (embeddings, 49k-vocab
    # head) to float32, which costs speed on CPU; PEFT keeps the adapter weights in float32 anyway.
    return get_peft_model(model, lora_config(cfg, model.config.is_encoder_decoder))


def lora_config(cfg: TrialConfig, encoder_decoder: bool):
    """The trial's PEFT LoraConfig."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.effective_alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM",
                      use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora)


def train(model, tokenizer, cfg: TrialConfig, data: TrialData, out_dir: Path, report: EmitEvent,
          evaluator: Callable[[object], EvalResult], resume_key: str = "") -> tuple[int, int]:
    """Fine-tune on summary tokens only, from the last complete checkpoint of the same `resume_key` when there
    is one; returns how many training rows were skipped as too long, and the optimizer steps taken.

    Decoder-only models: TRL's SFTTrainer on prompt/completion rows (completion-only loss).
    Encoder-decoder models: transformers' Seq2SeqTrainer, prompt into the encoder, summary as labels."""
    from datasets import Dataset

    checkpoints.seed_warm_start(out_dir, cfg.warm_start, resume_key)
    resume, step = checkpoints.last_checkpoint(out_dir, resume_key)
    reporter = ReportCallback(report, evaluator, cfg.training.eval_interval_steps)
    if resume is not None:
        print(f"resuming from the checkpoint of step {step}: {resume}", flush=True)
        reporter.replay(checkpoints.reported_points(resume))
    callbacks = [reporter, CheckpointCallback(resume_key, reporter.points, report, cfg.training.keep_final_checkpoint)]
    if model.config.is_encoder_decoder:
        from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

        rows, skipped = seq2seq_rows(cfg, tokenizer, data)
        total_steps = budget(cfg, len(rows))
        trainer = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**trainer_args(cfg, out_dir, total_steps)),
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), callbacks=callbacks)
    else:
        trainer, skipped, total_steps = sft_trainer(model, tokenizer, cfg, data, out_dir, callbacks)
    report(Budget(total_steps))  # the driver's per-trial progress: an epoch budget is known only here
    # The frozen 4-bit base dequantized once, not at every call (trainer.fourbit); a full disk named as such.
    with dequantized_base(model), checkpoints.disk_full_named(out_dir, lambda: trainer.state.global_step):
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return skipped, total_steps


def sft_trainer(model, tokenizer, cfg: TrialConfig, data: TrialData, out_dir: Path, callbacks: list = ()):
    """(trainer, rows skipped as too long, optimizer steps) of a decoder-only trial: its prompt/completion rows
    in TRL's SFTTrainer, with the loss on summary tokens only (trainer.sft)."""
    from datasets import Dataset
    from trl import SFTConfig

    from trainer.sft import SweepSFTTrainer

    rows, skipped = training_rows(cfg, tokenizer, data)
    total_steps = budget(cfg, len(rows))
    # TRL turns activation checkpointing on by default; trainer_args sets it from the spec.
    args = SFTConfig(**trainer_args(cfg, out_dir, total_steps), max_length=cfg.training.max_seq_length,
                     completion_only_loss=True)
    trainer = SweepSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=list(callbacks))
    return trainer, skipped, total_steps


def budget(cfg: TrialConfig, train_rows: int) -> int:
    """The trial's optimizer steps over the rows that fit; an epoch budget is checked here, once it is known."""
    total_steps = cfg.training.total_steps(train_rows)
    problems = cfg.training.step_problems("training", total_steps, f" ({train_rows} training rows fit)")
    if problems:
        raise ValueError("; ".join(p.render() for p in problems))
    print(f"training budget: {total_steps} optimizer steps over {train_rows} rows", flush=True)
    return total_steps


# bitsandbytes' optimizers by their transformers names; adamw keeps the Trainer's default (torch's AdamW).
_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
               "paged_adamw_32bit": "paged_adamw_32bit"}


def _optimizer(name: str) -> dict:
    import torch

    problem = None if torch.cuda.is_available() else paged_optimizer_problem("training.optimizer", name,
                                                                            "this worker has no GPU")
    if problem is not None:
        raise ValueError(problem.render())
    return {"optim": _OPTIMIZERS[name]} if name in _OPTIMIZERS else {}


def trainer_args(cfg: TrialConfig, out_dir: Path, total_steps: int) -> dict:
    """TrainingArguments shared by both trainers, for a budget of `total_steps` optimizer steps."""
    import torch

    t = cfg.training
    saving = dict(save_strategy="steps", save_steps=t.checkpoint_interval_steps) if t.checkpoint_interval_steps \
        else dict(save_strategy="no")
    return dict(output_dir=str(out_dir / checkpoints.TRAINER_DIR), max_steps=total_steps, **saving,
                per_device_train_batch_size=t.micro_batch_size, **_optimizer(t.optimizer),
                gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
                lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup(total_steps), seed=t.seed, data_seed=t.seed,
                max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay,
                logging_steps=t.logging_steps, activation_checkpointing=t.gradient_checkpointing,
                bf16=cfg.quantization.compute_dtype == "bfloat16",
                fp16=cfg.quantization.compute_dtype == "float16" and torch.cuda.is_available(),
                use_cpu=not torch.cuda.is_available(), report_to=[], disable_tqdm=True)


def seq2seq_rows(cfg: TrialConfig, tokenizer, data: TrialData) -> tuple[list[dict], int]:
    """Encoder input ids (dialogue cut to max_seq_length) and label ids (the whole summary + end token)."""
    rows, skipped = [], 0
    for example in training_examples(data, cfg.augmentation):
        labels = tokenizer(example.summary, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        dialogue = prompts.fit_dialogue(cfg, tokenizer, example.dialogue, cfg.training.max_seq_length)
        if dialogue is None or len(labels) > cfg.training.max_seq_length:
            skipped += 1
            continue
        encoded = tokenizer(prompts.prompt_text(cfg, tokenizer, dialogue), add_special_tokens=True)
        rows.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                     "labels": labels})
    if not rows:
        raise ValueError(f"no training row fits training.max_seq_length={cfg.training.max_seq_length}")
    return rows, skipped


def training_rows(cfg: TrialConfig, tokenizer, data: TrialData) -> tuple[list[dict], int]:
    """Prompt-completion rows with each dialogue cut so that prompt + full summary fit max_seq_length."""
    rows, skipped = [], 0
    chat = prompts.uses_chat(cfg, tokenizer)
    for example in training_examples(data, cfg.augmentation):  # speaker-swapped copies: training split only
        summary_tokens = len(tokenizer(example.summary, add_special_tokens=False)["input_ids"])
        budget = cfg.training.max_seq_length - summary_tokens - heldout.COMPLETION_END_TOKENS
        dialogue = prompts.fit_dialogue(cfg, tokenizer, example.dialogue, budget)
        if dialogue is None:
            skipped += 1
            continue
        if chat:
            rows.append({"prompt": prompts.messages(cfg, dialogue),
                         "completion": [{"role": "assistant", "content": example.summary}]})
        else:
            rows.append({"prompt": prompts.prompt_text(cfg, tokenizer, dialogue),
                         "completion": " " + example.summary})
    if not rows:
        raise ValueError(f"no training row fits training.max_seq_length={cfg.training.max_seq_length}: "
                         f"all {skipped} summaries plus prompts are longer; raise max_seq_length")
    return rows, skipped


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
             encoder_decoder: bool = False) -> EvalSet:
    """The first `limit` (default all) eval rows of `data` as `cfg` prompts them."""
    rows = data.eval[:limit]
    references = [e.references or (e.summary,) for e in rows]
    return EvalSet(eval_prompts(cfg, tokenizer, rows), references, [e.id for e in rows],
                   heldout.heldout_pairs(cfg, tokenizer, encoder_decoder, [e.dialogue for e in rows], references),
                   not prompts.uses_chat(cfg, tokenizer), scoring(cfg, data))


def make_evaluator(cfg: TrialConfig, tokenizer, data: TrialData, limit: int | None = None,
                   encoder_decoder: bool = False) -> Callable[[object], EvalResult]:
    """A function model -> EvalResult over the first `limit` (default all) eval rows, built once: ROUGE of the
    generated summaries, and the held-out loss of the references (`eval_loss`)."""
    rows = eval_set(cfg, tokenizer, data, limit, encoder_decoder)
    g = cfg.generation

    def run(model) -> EvalResult:
        with eval_mode(model):
            # The held-out loss continues from the prompts generation has just read (no second prefill).
            loss = heldout.HeldoutLoss(model, rows.pairs, len(rows.ids), g.eval_batch_size, tokenizer.pad_token_id)
            result = evaluate(model, tokenizer, rows.texts, rows.references, rows.ids, g.max_new_tokens,
                              g.eval_batch_size, rows.add_special, rows.how, g.generate_kwargs(), loss.from_prefill)
            return with_heldout_loss(result, loss.losses())

    return run


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Eval mode, with the frozen 4-bit base dequantized once rather than at every token and the adapter merged
    into it (trainer.lora_merge); the mode it was in after."""
    was_training = model.training
    model.eval()
    try:
        with dequantized_base(model), merged_adapters(model):
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
    budget = cfg.training.max_seq_length - cfg.generation.max_new_tokens
    return [prompts.prompt_text(cfg, tokenizer, prompts.fit_dialogue(cfg, tokenizer, e.dialogue, budget) or "")
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
        for key in ("loss", "learning_rate", "grad_norm"):
            if logs and key in logs:
                value = float(logs[key])
                self.report(Metric(f"train/{key}", state.global_step, value))
                if not math.isfinite(value):  # every later step would be wasted: end the trial here
                    raise TrialDiverged(f"diverged at step {state.global_step} ({key} {value})")

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
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        checkpoints.mark_complete(folder, self.resume_key, self.points)
        self.report(Checkpoint(state.global_step))  # not among `points`: an attempt replays curve points only


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
