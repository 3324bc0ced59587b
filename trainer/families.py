"""One class per model family: everything a trial does differently for a decoder-only (causal) model and for
an encoder-decoder one (T5, FLAN-T5, BART, KoBART).

A family says how its rows are built and trained (TRL's `SFTTrainer` on prompt/completion rows, or transformers'
`Seq2SeqTrainer` on encoder input and labels), its PEFT task type, how a held-out pair is built and scored, where
generated tokens start, and what the model card's snippet loads. `family_of` is the one place that asks which
family a model is; the trial, the pack, the loader, the export and the verification call the family it returns.
Adding a family is one class here and one entry in `FAMILIES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from trainer import heldout, prompts
from trainer.arguments import budget, trainer_args
from trainer.augment import training_examples
from trainer.config import TrialConfig
from trainer.data import TrialData


def prompt_room(cfg: TrialConfig, summary_tokens: int) -> int:
    """Tokens left for the prompt once the summary and the template's closing tokens have theirs."""
    return cfg.training.max_seq_length - summary_tokens - heldout.COMPLETION_END_TOKENS


class Family(Protocol):
    """What a trial does differently per model family."""

    name: str
    auto_class: str
    """transformers' Auto class that loads it (and that the model card's snippet names)."""
    lora_task_type: str
    """PEFT's task type."""
    uses_chat: bool
    """Whether a chat template may frame its prompts."""
    packs: bool
    """Whether several trials may share one base in lockstep (trainer.lockstep)."""
    snippet_new_tokens: str
    """The model card's code for the generated tokens of `output`."""

    def matches(self, config) -> bool: ...

    def training_rows(self, cfg: TrialConfig, tokenizer, data: TrialData) -> tuple[list[dict], int]:
        """(rows its trainer reads, rows skipped as too long)."""

    def trainer(self, model, tokenizer, cfg: TrialConfig, rows: list[dict], out_dir: Path, total_steps: int,
                callbacks: list = ()): ...

    def heldout_pair(self, cfg: TrialConfig, tokenizer, index: int, dialogue: str,
                     summary: str) -> heldout.Pair | None: ...

    def whole_losses(self, model, input_ids, attention_mask, labels, routed: dict, torch) -> list[float]:
        """The held-out loss of padded pairs read whole (heldout.HeldoutLoss)."""

    def new_tokens(self, sequence, prompt_width: int):
        """The generated part of one row that `generate` returned."""


class DecoderOnly:
    """Causal LMs (Llama, Qwen, SmolLM2, GPT-2): the prompt and the summary in one sequence, the loss on the
    summary tokens only; a chat template frames the prompt where the tokenizer has one."""

    name = "decoder-only"
    auto_class = "AutoModelForCausalLM"
    lora_task_type = "CAUSAL_LM"
    uses_chat = True
    packs = True
    snippet_new_tokens = "output[0, inputs['input_ids'].shape[1]:]"  # generate returns the prompt too

    def matches(self, config) -> bool:
        return True  # the last entry of FAMILIES: every model no other family claims

    def training_rows(self, cfg: TrialConfig, tokenizer, data: TrialData) -> tuple[list[dict], int]:
        """Prompt-completion rows with each dialogue cut so that prompt + full summary fit max_seq_length."""
        rows, skipped = [], 0
        chat = prompts.uses_chat(cfg, tokenizer)
        for example in training_examples(data, cfg.augmentation):  # speaker-swapped copies: training split only
            summary_tokens = len(tokenizer(example.summary, add_special_tokens=False)["input_ids"])
            dialogue = prompts.fit_dialogue(cfg, tokenizer, example.dialogue, prompt_room(cfg, summary_tokens))
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

    def trainer(self, model, tokenizer, cfg: TrialConfig, rows: list[dict], out_dir: Path, total_steps: int,
                callbacks: list = ()):
        """TRL's SFTTrainer with the loss on summary tokens only (trainer.sft)."""
        from datasets import Dataset
        from trl import SFTConfig

        from trainer.sft import SweepSFTTrainer

        # TRL turns activation checkpointing on by default; trainer_args sets it from the spec.
        args = SFTConfig(**trainer_args(cfg, out_dir, total_steps), max_length=cfg.training.max_seq_length,
                         completion_only_loss=True)
        return SweepSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                               processing_class=tokenizer, callbacks=list(callbacks))

    def heldout_pair(self, cfg: TrialConfig, tokenizer, index: int, dialogue: str,
                     summary: str) -> heldout.Pair | None:
        """The prompt (its dialogue cut so that prompt + summary fit max_seq_length) and the summary as the
        chat template closes an assistant turn (or with the end-of-sequence token), one sequence."""
        summary_ids = tokenizer(summary, add_special_tokens=False)["input_ids"]
        budget_tokens = prompt_room(cfg, len(summary_ids))
        fitted = prompts.fit_dialogue(cfg, tokenizer, dialogue, budget_tokens)
        if fitted is None or budget_tokens <= 0:
            return None
        chat = prompts.uses_chat(cfg, tokenizer)
        prompt_ids = tokenizer(prompts.prompt_text(cfg, tokenizer, fitted), add_special_tokens=not chat)["input_ids"]
        if chat:  # the completion as the chat template closes an assistant turn
            whole = tokenizer.apply_chat_template(prompts.messages(cfg, fitted)
                                                  + [{"role": "assistant", "content": summary}], tokenize=False)
            completion_ids = tokenizer(whole, add_special_tokens=False)["input_ids"][len(prompt_ids):]
        else:
            completion_ids = tokenizer(" " + summary, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return heldout.Pair(index, prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids)

    def whole_losses(self, model, input_ids, attention_mask, labels, routed: dict, torch) -> list[float]:
        """Each row's mean cross-entropy of its labelled tokens, position t predicting token t + 1."""
        return heldout.causal_losses(model, input_ids, attention_mask, labels, routed, torch)

    def new_tokens(self, sequence, prompt_width: int):
        """The generated part of one row that `generate` returned (prompt, then continuation)."""
        return sequence[prompt_width:]


class EncoderDecoder:
    """T5, FLAN-T5, BART, KoBART: the prompt into the encoder, the summary as the decoder's labels; no chat
    template (the encoder reads the plain prompt)."""

    name = "encoder-decoder"
    auto_class = "AutoModelForSeq2SeqLM"
    lora_task_type = "SEQ_2_SEQ_LM"
    uses_chat = False
    packs = False
    snippet_new_tokens = "output[0]"

    def matches(self, config) -> bool:
        return bool(getattr(config, "is_encoder_decoder", False))

    def training_rows(self, cfg: TrialConfig, tokenizer, data: TrialData) -> tuple[list[dict], int]:
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

    def trainer(self, model, tokenizer, cfg: TrialConfig, rows: list[dict], out_dir: Path, total_steps: int,
                callbacks: list = ()):
        """transformers' Seq2SeqTrainer, labels padded by its collator."""
        from datasets import Dataset
        from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

        return Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**trainer_args(cfg, out_dir, total_steps)),
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), callbacks=list(callbacks))

    def heldout_pair(self, cfg: TrialConfig, tokenizer, index: int, dialogue: str,
                     summary: str) -> heldout.Pair | None:
        """The encoder input (dialogue cut to max_seq_length) and the summary + end token as labels."""
        summary_ids = tokenizer(summary, add_special_tokens=False)["input_ids"]
        fitted = prompts.fit_dialogue(cfg, tokenizer, dialogue, cfg.training.max_seq_length)
        if fitted is None or prompt_room(cfg, len(summary_ids)) <= 0:
            return None
        encoded = tokenizer(prompts.prompt_text(cfg, tokenizer, fitted), add_special_tokens=True)["input_ids"]
        return heldout.Pair(index, encoded, summary_ids + [tokenizer.eos_token_id])

    def whole_losses(self, model, input_ids, attention_mask, labels, routed: dict, torch) -> list[float]:
        """Each row's mean cross-entropy of its labels, the decoder reading them shifted (teacher forcing)."""
        logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **routed).logits
        return heldout.mean_token_losses(logits, labels, torch)

    def new_tokens(self, sequence, prompt_width: int):
        """The generated part of one row: the decoder's whole output (its start token is special: decoding with
        skip_special_tokens drops it)."""
        return sequence


FAMILIES: tuple[Family, ...] = (EncoderDecoder(), DecoderOnly())
"""Asked in order; the first whose `matches` says yes is the model's family."""
DECODER_ONLY: Family = FAMILIES[-1]


def family_of(config) -> Family:
    """The family of a model, from its config (`model.config`, or AutoConfig of a folder or hub id)."""
    return next(family for family in FAMILIES if family.matches(config))


def family_of_path(path: str) -> Family:
    """The family of the model at `path` (a folder or hub id), from its config alone."""
    from transformers import AutoConfig

    return family_of(AutoConfig.from_pretrained(path))


def sft_trainer(model, tokenizer, cfg: TrialConfig, data: TrialData, out_dir: Path, callbacks: list = ()):
    """(trainer, rows skipped as too long, optimizer steps) of a decoder-only trial (a pack's members train so)."""
    rows, skipped = DECODER_ONLY.training_rows(cfg, tokenizer, data)
    total_steps = budget(cfg, len(rows))
    return DECODER_ONLY.trainer(model, tokenizer, cfg, rows, out_dir, total_steps, callbacks), skipped, total_steps
