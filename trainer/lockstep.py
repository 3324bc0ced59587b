"""Several LoRA trials on one base model in one worker, trained in lockstep: a pack.

One PEFT model carries one named adapter per trial, each with its own LoraConfig. Every optimizer step, each
trial's own micro batches (its rows, in its own data order) go into one batch, and PEFT's mixed-adapter routing
(`adapter_names`, `LoraLayer._mixed_batch_forward`) sends each row through its own trial's adapter only: one
forward and one backward of the frozen base serve every trial. The loss is each trial's own, summed: the
adapters share no parameter, so each adapter's gradient is the gradient of its own trial's loss. Each trial
then clips, steps and schedules with its own optimizer, and logs its own loss and gradient norm.

Reused: a TRL SFTTrainer per trial for what it builds, which is what an isolated trial trains with: the
prepared dataset, the collator and the seeded dataloader, the Trainer's optimizer and scheduler. PEFT's routing,
which PEFT refuses in training mode by one check (`LoraModel._enable_peft_forward_hooks`); `routed` installs
its very pre-forward hook without that check. Replaced: the Trainer's loop, because it steps one optimizer over
one loss. `_step` does per trial what that loop does per step (accumulation, clipping, the NaN filter of the
logged loss, checkpoints in the Trainer's own format, so that a checkpoint resumes alone or in another pack),
and tests/test_pack.py holds it to the isolated trial's numbers.

Written once for both, and called from here and from the isolated trial: the loss on summary tokens and the
step's token count it is divided by (trainer.sft: `summary_token_losses`, `summary_tokens`), the logged point
and its divergence check (trainer.trial: `report_train_point`), a checkpoint's completion mark
(`seal_checkpoint`), and the evaluation's reports (`report_eval`, `report_scores`).

Not the same as alone: LoRA dropout above 0 draws its masks from the pack's one RNG stream, not the trial's
(the equivalence is exact with dropout 0, what the shipped specs use). A float16 compute dtype (GPUs before
Ampere) needs a loss scaler per trial, which this loop does not have: such a pack runs its trials one after
another, each alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from evaluation import EvalResult, score
from evaluation.generate import generate
from trainer import checkpoints, heldout
from trainer.config import TrialConfig
from trainer.data import TrialData
from trainer.events import Budget, Event, Metric, Phase, Step, TrialDiverged
from trainer.fourbit import dequantized_base
from trainer.lora_autocast import follow_cpu_autocast
from trainer.result import TrialResult
from trainer.sft import slices_logits_by_mask, summary_token_losses, summary_tokens
from trainer.families import family_of, sft_trainer
from trainer.trial import (EmitEvent, EvalSet, eval_mode, eval_set, folder_mib, load, lora_config, report_eval,
                           report_scores, report_train_point, resolve_device, run_trial, seal_checkpoint, set_threads,
                           with_heldout_loss)


@dataclass
class PackTrial:
    """One trial given to a pack: what `run_trial` would be given."""

    key: Any
    cfg: TrialConfig
    data: TrialData
    out_dir: Path
    report: EmitEvent


class LeftPack(RuntimeError):
    """A trial left its pack before the pack ended: stopped or pruned from outside (the reason is the message)."""


Leaving = Callable[[], dict[Any, str]]
"""Returns the keys asked to leave the pack since the last call, each with its reason."""
OnLeave = Callable[[Any, BaseException], None]
"""Called once when a trial leaves before the pack ends (asked to, or diverged), with why."""


@dataclass(eq=False)
class _Member:
    trial: PackTrial
    adapter: str
    """The trial's adapter name in the pack's PEFT model."""
    cfg: TrialConfig
    """As resolved on this device (compute dtype)."""
    environment: dict
    resume_key: str
    points: list[Event] = field(default_factory=list)
    """Every curve point reported so far: a checkpoint keeps them (trainer.checkpoints)."""
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    groups: Iterator[list[dict]] | None = None
    total_steps: int = 0
    step: int = 0
    skipped: int = 0
    logged_at: int = 0
    loss_sum: Any = None
    """The trial's summed micro-batch losses since its last logged point (the Trainer's `tr_loss`)."""
    grad_norm: Any = None
    learning_rate: float = 0.0
    args: Any = None
    """Its SFTConfig (the Trainer's arguments it would run with alone)."""
    eval_result: EvalResult | None = None
    adapter_dir: str | None = None
    result: TrialResult | None = None

    def report(self, event: Event) -> None:
        if isinstance(event, Metric):
            self.points.append(event)
        self.trial.report(event)

    @property
    def training(self) -> bool:
        return self.error is None and self.step < self.total_steps


def run_pack(trials: list[PackTrial], num_threads: int | None = None, leaving: Leaving = dict,
             on_leave: OnLeave = lambda key, error: None) -> dict[Any, TrialResult | BaseException]:
    """Run `trials` (compatible: trainer.packing) on one base; each key -> its TrialResult, or why it failed or
    left. A failure of the pack itself (loading, out of memory) raises: it is every remaining trial's."""
    from trainer.hardware import probe_device

    set_threads(num_threads)
    device = probe_device()  # one worker, one device: measured once for all its trials
    members = [_member(t, i, device) for i, t in enumerate(trials)]
    if members[0].cfg.quantization.compute_dtype == "float16":
        return {t.key: _alone(t, num_threads) for t in trials}
    with _phase(members, Step.LOAD):
        tokenizer, model = load(members[0].cfg)
        family = family_of(model.config)
        if not family.packs:
            raise ValueError(f"a pack cannot train {family.name} models; set resources.trials_per_worker: 1 for "
                             f"{members[0].cfg.model.name}")
        finals = {m: eval_set(m.cfg, tokenizer, m.trial.data) for m in members}
        interims = {m: eval_set(m.cfg, tokenizer, m.trial.data, m.cfg.training.interim_eval_examples) for m in members}
    with _phase(members, Step.ADAPT):
        model = adapt_all(model, members)
    with _phase(members, Step.TRAIN):
        for m in members:
            _prepare(m, model, tokenizer)
        _set_trainable(model, members)
        with dequantized_base(model):  # as an isolated trial trains (trainer.fourbit)
            _train(model, tokenizer, members, interims, _Exits(members, leaving, on_leave))
    _finish(model, tokenizer, [m for m in members if m.error is None], finals)
    return {m.trial.key: m.error if m.error is not None else m.result for m in members}


def _member(trial: PackTrial, index: int, device=None) -> _Member:
    key = checkpoints.resume_key(trial.cfg, trial.data)
    cfg, environment = resolve_device(trial.cfg, trial.report, device)
    return _Member(trial, f"trial_{index}", cfg, environment, key)


def _alone(trial: PackTrial, num_threads: int | None) -> TrialResult | BaseException:
    try:
        return run_trial(trial.cfg, trial.data, trial.out_dir, trial.report, num_threads)
    except Exception as exc:  # one trial's failure is its own
        return exc


@contextmanager
def _phase(members: list[_Member], step: Step) -> Iterator[None]:
    """Every remaining member enters `step`; each records the pack's wall time of it as its own."""
    present = [m for m in members if m.error is None]
    for m in present:
        m.report(Phase(step))
    start = time.perf_counter()
    try:
        yield
    finally:
        for m in present:
            m.timings[step.value] = time.perf_counter() - start


def adapt_all(model, members: list[_Member]):
    """One PEFT model with one adapter per member, each initialized from its own seed as it would be alone."""
    from peft import get_peft_model
    from transformers import set_seed

    peft_model = None
    for m in members:
        set_seed(m.cfg.training.seed)  # the LoRA init draws from the global RNG, as adapt() does after run_trial's seed
        config = lora_config(m.cfg)  # a pack holds decoder-only models
        if peft_model is None:
            peft_model = get_peft_model(model, config, adapter_name=m.adapter)
        else:
            peft_model.add_adapter(m.adapter, config)
    follow_cpu_autocast(peft_model)  # as adapt() does for a trial alone
    return peft_model


def adapter_params(model, adapter: str) -> list:
    """The parameters of one named adapter (PEFT names them `...lora_A.<adapter>.weight`)."""
    return [p for name, p in model.named_parameters() if f".{adapter}." in name]


@contextmanager
def _trainable_only(model, adapter: str) -> Iterator[None]:
    """Within the block only `adapter` requires grad: a Trainer built there optimizes it alone."""
    saved = {p: p.requires_grad for p in model.parameters()}
    own = {id(p) for p in adapter_params(model, adapter)}
    for p in model.parameters():
        p.requires_grad_(id(p) in own)
    try:
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


def _set_trainable(model, members: list[_Member]) -> None:
    trained = {id(p) for m in members if m.training for p in m.params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)


def _prepare(m: _Member, model, tokenizer) -> None:
    """The member's own rows, budget, optimizer, schedule and data order, built by TRL and the Trainer exactly as
    they are for it alone; then its last complete checkpoint, if any."""
    with _trainable_only(model, m.adapter):
        trainer, m.skipped, m.total_steps = sft_trainer(model, tokenizer, m.cfg, m.trial.data, m.trial.out_dir)
        trainer.create_optimizer_and_scheduler(m.total_steps)
        m.params = adapter_params(model, m.adapter)
    m.optimizer, m.scheduler, m.args = trainer.optimizer, trainer.lr_scheduler, trainer.args
    m.groups = _groups(trainer.get_train_dataloader(), trainer.args.gradient_accumulation_steps)
    m.report(Budget(m.total_steps))
    _resume(m, model)


def _groups(dataloader, accumulation: int) -> Iterator[list[dict]]:
    """The micro batches of each optimizer step, epoch after epoch, as the Trainer's loop groups them: the
    epoch set on the dataloader and its batch sampler (the seeded order), the last group of an epoch shorter."""
    for epoch in itertools.count():
        dataloader.set_epoch(epoch)
        sampler = getattr(getattr(dataloader, "batch_sampler", None), "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batches = list(dataloader)
        for start in range(0, len(batches), accumulation):
            yield batches[start:start + accumulation]


@contextmanager
def routed(model, adapter_names: list[str]) -> Iterator[None]:
    """Every row of the next forward (and of its recomputation under gradient checkpointing) through its own
    adapter: PEFT's mixed-batch pre-forward hook on each LoRA layer, allowed in training mode too. (Slicing each
    trial's contiguous rows instead of PEFT's index gather and scatter was tried: no faster, measured.)"""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.model import _adapter_names_pre_forward_hook

    hook = partial(_adapter_names_pre_forward_hook, adapter_names=adapter_names)
    handles = [module.register_forward_pre_hook(hook, with_kwargs=True)
               for module in model.modules() if isinstance(module, LoraLayer)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Exits:
    """Members that leave before the pack ends: asked to from outside, or diverged."""

    def __init__(self, members: list[_Member], leaving: Leaving, on_leave: OnLeave):
        self.by_key = {m.trial.key: m for m in members}
        self.leaving, self.on_leave = leaving, on_leave

    def poll(self) -> None:
        for key, reason in self.leaving().items():
            if key in self.by_key and self.by_key[key].error is None:
                self.leave(self.by_key[key], LeftPack(reason))

    def leave(self, m: _Member, error: BaseException) -> None:
        m.error = error
        print(f"trial {m.trial.key} left the pack: {error}", flush=True)
        self.on_leave(m.trial.key, error)


def _train(model, tokenizer, members: list[_Member], interims: dict[_Member, EvalSet], exits: _Exits) -> None:
    """Optimizer steps in lockstep until every member has taken its budget (or left)."""
    while True:
        exits.poll()
        active = [m for m in members if m.training]
        if not active:
            return
        _step(model, tokenizer.pad_token_id, active)
        for m in active:
            _after_step(m, model, exits)
        due = [m for m in active if m.training and m.cfg.training.eval_interval_steps
               and m.step % m.cfg.training.eval_interval_steps == 0]
        if due:
            _interim_eval(model, tokenizer, due, interims, exits)
        _set_trainable(model, members)  # a member that left stops receiving gradients


def _step(model, pad_id: int, active: list[_Member]) -> None:
    """One optimizer step of every active member: each accumulates its own group of micro batches, all members'
    i-th micro batches in one forward and backward."""
    import torch

    groups = {m: next(m.groups) for m in active}
    items = {m: summary_tokens(group) for m, group in groups.items()}
    for i in range(max(len(group) for group in groups.values())):
        part = [(m, group[i]) for m, group in groups.items() if i < len(group)]
        losses = _forward_backward(model, pad_id, part, items)
        for m, loss in losses.items():
            loss = loss.detach()
            if m.loss_sum is None:
                m.loss_sum = torch.zeros((), device=loss.device)
            if torch.isfinite(loss):
                m.loss_sum += loss
            else:  # the Trainer's logging_nan_inf_filter: the mean of the points since the last log instead
                m.loss_sum += m.loss_sum / (1 + m.step - m.logged_at)
    for m in active:
        max_norm = m.cfg.training.max_grad_norm
        m.grad_norm = torch.nn.utils.clip_grad_norm_(m.params, max_norm if max_norm > 0 else math.inf)
        m.optimizer.step()
        m.learning_rate = m.scheduler.get_last_lr()[0]  # before the schedule steps, as the Trainer logs it
        m.scheduler.step()
        m.step += 1
    model.zero_grad(set_to_none=True)


def _forward_backward(model, pad_id: int, part: list[tuple[_Member, dict]], items: dict[_Member, int]) -> dict:
    """One forward of the members' micro batches as one batch (right-padded to the longest), each row through its
    own adapter; returns each member's loss (summed over its summary tokens / its step's count), after the
    backward of their sum."""
    import torch

    batch = _merge([b for _, b in part], pad_id)
    rows = [m for m, b in part for _ in range(b["input_ids"].shape[0])]
    labels = batch.pop("labels")
    bf16 = part[0][0].cfg.quantization.compute_dtype == "bfloat16"
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with routed(model, [m.adapter for m in rows]):
        with autocast:  # what the Trainer's accelerator wraps the forward in
            token_loss, scored = summary_token_losses(model, {**batch, "use_cache": False}, labels,
                                                      slices=slices_logits_by_mask(model))
        owner = torch.arange(len(rows), device=scored.device).unsqueeze(1).expand_as(scored)[scored]
        losses = {}
        for m in dict.fromkeys(rows):
            own = torch.tensor([r is m for r in rows], device=scored.device)[owner]
            losses[m] = token_loss[own].sum() / max(items[m], 1)
        sum(losses.values()).backward()
    return losses


def _merge(batches: list[dict], pad_id: int) -> dict:
    """Micro batches of several trials as one, each right-padded to the longest (appended padding changes no
    earlier position of a causal model)."""
    import torch

    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "labels": -100}

    def padded(tensor, value):
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    return {key: torch.cat([padded(b[key], fill.get(key, 0)) for b in batches]) for key in batches[0]}


def _after_step(m: _Member, model, exits: _Exits) -> None:
    """The member's logged point (every logging_steps) and checkpoint (every checkpoint_interval_steps), as the
    Trainer's callbacks would; a non-finite loss or gradient norm ends it as diverged."""
    t = m.cfg.training
    if m.step % t.logging_steps == 0:
        values = {"loss": float(m.loss_sum) / (m.step - m.logged_at), "learning_rate": float(m.learning_rate),
                  "grad_norm": float(m.grad_norm)}
        m.loss_sum, m.logged_at = m.loss_sum - m.loss_sum, m.step
        try:
            report_train_point(m.report, m.step, values)
        except TrialDiverged as diverged:
            exits.leave(m, diverged)
            return
    interval = t.checkpoint_interval_steps
    if (interval and m.step % interval == 0 and m.step < m.total_steps) or \
            (t.keep_final_checkpoint and m.step == m.total_steps):
        save_checkpoint(m, model)


def _interim_eval(model, tokenizer, due: list[_Member], sets: dict[_Member, EvalSet], exits: _Exits) -> None:
    results = evaluate_pack(model, tokenizer, [(m.adapter, m.cfg, sets[m]) for m in due])
    for m, result in zip(due, results):
        try:
            report_eval(m.report, result, m.step)
            report_scores(m.report, result, m.step)
        except TrialDiverged as diverged:
            exits.leave(m, diverged)


def evaluate_pack(model, tokenizer, entries: list[tuple[str, TrialConfig, EvalSet]]) -> list[EvalResult]:
    """Each entry's eval rows through its own adapter, the pack's prompts mixed in each generate call and each
    held-out loss batch (eval_batch_size per trial). Generation and decoding settings are shared by a pack."""
    g = entries[0][1].generation
    texts, names, pairs, pair_names, offset = [], [], [], [], 0
    for name, _, rows in entries:
        texts += rows.texts
        names += [name] * len(rows.texts)
        pairs += [dataclasses.replace(p, example=p.example + offset) for p in rows.pairs]
        pair_names += [name] * len(rows.pairs)
        offset += len(rows.ids)
    batch_size = g.eval_batch_size * len(entries)
    with eval_mode(model):
        loss = heldout.HeldoutLoss(model, pairs, offset, batch_size, tokenizer.pad_token_id, pair_names)
        generations = generate(model, tokenizer, texts, g.max_new_tokens, batch_size, entries[0][2].add_special,
                               g.generate_kwargs(), names, loss.from_prefill)
        losses = loss.losses()
    results, start = [], 0
    for _, _, rows in entries:
        end = start + len(rows.ids)
        result = score(generations[start:end], rows.references, rows.ids, rows.how)
        results.append(with_heldout_loss(result, losses[start:end]))
        start = end
    return results


def _finish(model, tokenizer, members: list[_Member], finals: dict[_Member, EvalSet]) -> None:
    """Report the skipped rows, evaluate every remaining member together, save each one's adapter."""
    from trainer.hardware import peak_memory_mib

    for m in members:
        m.report(Metric("train/skipped_examples", 0, float(m.skipped)))
    with _phase(members, Step.EVALUATE):
        results = evaluate_pack(model, tokenizer, [(m.adapter, m.cfg, finals[m]) for m in members]) if members else []
    for m, result in zip(members, results):
        try:
            report_eval(m.report, result, m.total_steps)
        except TrialDiverged as diverged:
            m.error = diverged
        m.eval_result = result
    kept = [m for m in members if m.error is None]
    footprints = {m: _footprint(model, m) for m in kept}
    with _phase(kept, Step.SAVE):
        for m in kept:
            m.adapter_dir = save_adapter(model, m.adapter, m.trial.out_dir / "adapter")
            if not m.cfg.training.keep_final_checkpoint:
                checkpoints.remove_checkpoints(m.trial.out_dir)
    peaks = peak_memory_mib()
    for m in kept:
        footprint = {**footprints[m], "saved_mib": folder_mib(m.adapter_dir)}
        environment = {**m.environment, **peaks, "pack_size": len(members)}
        m.result = TrialResult({**m.eval_result.metrics, **footprint}, m.eval_result.predictions, m.adapter_dir,
                               m.timings, m.eval_result.scoring, environment)


def _footprint(model, m: _Member) -> dict[str, float]:
    """Trainable and total parameters as the trial alone would count them: the base plus its own adapter."""
    _, total = model.get_nb_trainable_parameters()  # every adapter in the model is counted
    own = sum(p.numel() for p in m.params)
    others = sum(p.numel() for name in model.peft_config if name != m.adapter for p in adapter_params(model, name))
    return {"trainable_params": float(own), "total_params": float(total - others)}


def save_adapter(model, adapter: str, folder: Path) -> str:
    """One adapter of the pack saved as PEFT saves a model's only adapter (no sub-folder for its name)."""
    staging = folder.parent / f".{folder.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, selected_adapters=[adapter])
    shutil.rmtree(folder, ignore_errors=True)
    (staging / adapter).rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def save_checkpoint(m: _Member, model) -> None:
    """The member's checkpoint in the Trainer's own layout (adapter, optimizer, scheduler, RNG, trainer state),
    so that `trainer.train(resume_from_checkpoint=...)` resumes it alone, as a pack resumes it; then marked
    complete with its points."""
    import numpy as np
    import torch
    from transformers import TrainerControl, TrainerState

    folder = m.trial.out_dir / checkpoints.TRAINER_DIR / f"checkpoint-{m.step}"
    with checkpoints.disk_full_named(m.trial.out_dir, lambda: m.step):  # as a trial alone names a full disk
        save_adapter(model, m.adapter, folder)
        torch.save(m.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(m.scheduler.state_dict(), folder / "scheduler.pt")
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                    "cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
        t = m.cfg.training
        TrainerState(global_step=m.step, max_steps=m.total_steps, logging_steps=t.logging_steps,
                     save_steps=t.checkpoint_interval_steps or 500, train_batch_size=t.micro_batch_size,
                     num_train_epochs=m.args.num_train_epochs, stateful_callbacks=[TrainerControl()],
                     ).save_to_json(str(folder / "trainer_state.json"))
        seal_checkpoint(folder, m.resume_key, m.points, m.report, m.step)


def _resume(m: _Member, model) -> None:
    """Continue from the member's last complete checkpoint (its own, written alone or in any pack): its adapter,
    optimizer and schedule, its data position; its points reported again."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder, step = checkpoints.last_checkpoint(m.trial.out_dir, m.resume_key)
    if folder is None:
        return
    print(f"trial {m.trial.key} resumes from the checkpoint of step {step}: {folder}", flush=True)
    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"), adapter_name=m.adapter)
    m.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    m.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    for _ in range(step):
        next(m.groups)
    m.step = m.logged_at = step
    for event in checkpoints.reported_points(folder):
        m.report(event)
