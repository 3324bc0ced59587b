"""`sweep export`: a trial's LoRA adapter (and optionally the base model with it merged in) as a
folder with a model card recording the config it was trained with and the scores it got."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from results import environment
from results.store import TrialSummary


class ExportError(Exception):
    pass


def export(trial: TrialSummary, config: dict, adapter_dir: str | None, sweep: str, out: Path,
           merged: bool = False) -> list[Path]:
    """Write `out/adapter/`, `out/README.md` and, when asked, `out/merged/`; returns what was written."""
    if trial.status != "completed" or trial.kind != "trial":
        raise ExportError(f"only a completed fine-tune has an adapter to export; {trial.name} is a "
                          f"{trial.status} {trial.kind}")
    full = config.get("training", {}).get("method") == "full"
    saved = "config.json" if full else "adapter_config.json"
    if not adapter_dir or not (Path(adapter_dir) / saved).exists():
        raise ExportError(f"the {'model' if full else 'adapter'} of {trial.name} must be on this machine; it is not "
                          f"at {adapter_dir} (on a cluster it stays on the node that ran the trial: run export there)")
    out.mkdir(parents=True, exist_ok=True)
    if full:  # every weight was trained: the saved model is the export, with its tokenizer; nothing to merge
        return _export_full(trial, config, adapter_dir, sweep, out)
    shutil.copytree(adapter_dir, out / "adapter", dirs_exist_ok=True)
    written = [out / "adapter"]
    if merged:
        dtype = (trial.environment or {}).get("compute_dtype") or config["quantization"]["compute_dtype"]
        written.append(merge(config, adapter_dir, out / "merged", dtype))
    card = out / "README.md"
    card.write_text(model_card(trial, config, sweep, merged), encoding="utf-8")
    return written + [card]


def _export_full(trial: TrialSummary, config: dict, model_dir: str, sweep: str, out: Path) -> list[Path]:
    from trainer.models import load_tokenizer, resolve_model_path

    shutil.copytree(model_dir, out / "model", dirs_exist_ok=True)
    load_tokenizer(resolve_model_path(config["model"]["name"])).save_pretrained(out / "model")
    card = out / "README.md"
    card.write_text(model_card(trial, config, sweep, merged=False), encoding="utf-8")
    return [out / "model", card]


def merge(config: dict, adapter_dir: str, target: Path, dtype: str) -> Path:
    """The base model in the trial's compute dtype (`dtype`, as it resolved; not 4-bit: merged weights must be
    exact) plus the adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from trainer.models import is_encoder_decoder, load_tokenizer, resolve_model_path, resolved_dtype

    path = resolve_model_path(config["model"]["name"])
    family = AutoModelForSeq2SeqLM if is_encoder_decoder(path) else AutoModelForCausalLM
    base = family.from_pretrained(path, dtype=getattr(torch, resolved_dtype(dtype)))
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(target)
    load_tokenizer(path).save_pretrained(target)
    return target


def model_card(trial: TrialSummary, config: dict, sweep: str, merged: bool) -> str:
    scores = "\n".join(f"| {k} | {100 * v:.2f} |" if k.startswith("rouge") else f"| {k} | {v:.1f} |"
                       for k, v in trial.metrics.items())
    how = "\n".join(f"- {k}: {v}" for k, v in (trial.scoring or {}).items()) or "- not recorded"
    base = config["model"]["name"]
    return f"""---
base_model: {base}
library_name: peft
tags: [lora, qlora, summarization, qlora-sweep]
---
# {trial.name} (sweep {sweep})

LoRA adapter (rank {config["lora"]["rank"]}) for `{base}`, fine-tuned for dialogue summarization by
qlora-sweep with a {config["quantization"]["mode"]} base model. {"`merged/` holds the base model with the adapter merged in." if merged else ""}

## Scores (eval split `{config["dataset"].get("eval_split")}`, {trial.scoring.get("eval_examples", "?") if trial.scoring else "?"} examples)

| metric | value |
| --- | --- |
{scores}

How they were computed:
{how}

Trained on: {environment.describe(trial.environment)}

## Swept settings

{", ".join(f"`{k}` = {v}" for k, v in trial.params.items())}

## Full trial config

```yaml
{yaml.safe_dump(config, sort_keys=False).strip()}
```

## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("<base model>"), "adapter")
```
"""
