"""The README.md of an export: the real base, the scores with how they were computed, where it was trained,
and a snippet that runs as it is and builds the prompt the way the trial did."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import yaml

from evaluation.metrics import metric
from results import environment
from results.store import TrialSummary
from trainer.config import TrialConfig

if TYPE_CHECKING:
    from trainer.families import Family

_HELD = {"adapter": "`adapter/`: the LoRA adapter; `merged/` is absent",
         "merged": "`adapter/`: the LoRA adapter; `merged/`: the base, quantized and dequantized as the trial saw "
                   "it, with the adapter merged in (plain transformers, no PEFT or bitsandbytes needed)",
         "model": "`model/`: the whole fine-tuned model (every weight was trained), with its tokenizer"}


def model_card(trial: TrialSummary, cfg: TrialConfig, sweep: str, folder: str, base: dict, family: Family,
               dtype: str, verified: str | None = None) -> str:
    """`folder` is what the snippet loads: adapter, merged or model; `family`: the base model's
    (trainer.families); `verified`: how faithful `merged/` is (orchestrator.export.verification.summary_line)."""
    library = "peft" if folder == "adapter" else "transformers"
    loaded = f" (loaded from `{base['loaded_from']}`" + (f"; {base['note']})" if base["note"] else ")")
    return f"""---
base_model: {base["id"]}
library_name: {library}
tags: [lora, qlora, summarization, qlora-sweep]
---
# {trial.name} (sweep {sweep})

Fine-tuned for dialogue summarization by qlora-sweep: {_method(cfg)} of `{base["id"]}`{loaded}.

{_HELD[folder]}. `eval_examples.jsonl` holds every eval prompt exactly as the trial gave it to the tokenizer,
with how it was generated and the prediction stored in the leaderboard.

## Scores ({len(trial.metrics)} metrics over the eval split)

| metric | value |
| --- | --- |
{_scores(trial.metrics)}

How they were computed:
{_provenance(trial.scoring)}

Trained on: {environment.describe(trial.environment)}
{_verified(verified)}
## Use

```python
{snippet(cfg, folder, base["id"], family, dtype)}
```

Dialogues longer than `training.max_seq_length - generation.max_new_tokens` tokens
({cfg.training.max_seq_length} - {cfg.generation.max_new_tokens}) were cut to fit before the prompt was built;
`eval_examples.jsonl` shows the cut prompts.

## Swept settings

{", ".join(f"`{k}` = {v}" for k, v in trial.params.items()) or "none"}

## Full trial config

```yaml
{yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True).strip()}
```
"""


def snippet(cfg: TrialConfig, folder: str, base_id: str, family: Family, dtype: str) -> str:
    """Python that loads the export, builds the prompt as the trial did and decodes as it did."""
    auto_class = family.auto_class
    chat = cfg.model.use_chat_template and family.uses_chat  # decided again below by the tokenizer's template
    lines = [f"from transformers import {auto_class}, AutoTokenizer"]
    if folder == "adapter":
        lines += _adapter_loading(cfg, auto_class, base_id, dtype)
    else:
        lines += [f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
                  f"model = {auto_class}.from_pretrained({folder!r}, dtype={dtype!r})"]
    lines += [f"TEMPLATE = {cfg.prompt_template!r}", "", "", "def prompt(dialogue: str) -> tuple[str, bool]:",
              '    """The text the trial gave the tokenizer, and whether the tokenizer adds its special tokens."""']
    if chat:
        system = [{"role": "system", "content": cfg.model.system_prompt}] if cfg.model.system_prompt else []
        lines += ["    if tokenizer.chat_template:  # the trial used the chat template when the tokenizer had one",
                  f"        messages = {system!r} + [{{'role': 'user', 'content': TEMPLATE.format(dialogue=dialogue)}}]",
                  "        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), "
                  "False"]
    lines += ["    return TEMPLATE.format(dialogue=dialogue) + '\\nSummary:', True", "", "",
              "text, special = prompt('#Person1#: Can we meet at ten?\\n#Person2#: Yes, at the cafe.')",
              "inputs = tokenizer(text, return_tensors='pt', add_special_tokens=special)",
              f"output = model.generate(**inputs, max_new_tokens={cfg.generation.max_new_tokens}, do_sample=False, "
              f"**{cfg.generation.generate_kwargs()!r})",
              f"new_tokens = {family.snippet_new_tokens}",
              "print(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())"]
    return "\n".join(lines)


def _adapter_loading(cfg: TrialConfig, auto_class: str, base_id: str, dtype: str) -> list[str]:
    q = cfg.quantization
    lines = ["from peft import PeftModel"]
    quantized = ""
    if q.mode == "int8":
        lines += ["from transformers import BitsAndBytesConfig"]
        quantized = ", quantization_config=BitsAndBytesConfig(load_in_8bit=True)"
    elif q.mode != "none":
        lines += ["from transformers import BitsAndBytesConfig"]
        quantized = (f", quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={q.mode!r}, "
                     f"bnb_4bit_use_double_quant={q.double_quant}, bnb_4bit_compute_dtype={dtype!r})")
    return lines + [f"tokenizer = AutoTokenizer.from_pretrained({base_id!r})",
                    f"base = {auto_class}.from_pretrained({base_id!r}, dtype={dtype!r}{quantized})",
                    "model = PeftModel.from_pretrained(base, 'adapter')"]


def _verified(line: str | None) -> str:
    return f"\nReproduction: {line}\n" if line else ""


def _method(cfg: TrialConfig) -> str:
    if cfg.training.method == "full":
        return "a full fine-tune"
    return f"LoRA rank {cfg.lora.rank} (alpha {cfg.lora.effective_alpha}) on a {cfg.quantization.mode} base"


def _scores(metrics: dict[str, float]) -> str:
    return "\n".join(f"| {k} | {metric(k).shown(v)} |" for k, v in metrics.items())


def _provenance(scoring: dict | None) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in (scoring or {}).items()) or "- not recorded"
