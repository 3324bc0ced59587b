"""How faithful a merged export is: its eval prompts generated again with the exported model exactly as the model
card's snippet loads and prompts it (plain transformers, the trial's dtype, one prompt at a time), compared with
the stored predictions, and the ranking metric scored again next to the stored one and its interval.

A merged model can differ from the trial's 4-bit base + adapter in its last bits: merging adds the adapter's
update into the dequantized weight and rounds the sum to the dtype, where the trial added two rounded outputs.
In float32 that has reproduced every prediction here; in bfloat16 some greedy decodes take another token. Either
way `verification.json` and the card say how many matched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.rouge import ROUGE_SUM, ROUGE_TYPES, resolve_tokenizer, score_examples
from results.significance import mean_interval
from trainer.config import TrialConfig

if TYPE_CHECKING:
    from trainer.families import Family

VERIFICATION = "verification.json"
_RESCORED = (*ROUGE_TYPES, ROUGE_SUM)  # computed from generations alone; another ranking metric re-scores rougeL


def verify(folder: Path, cfg: TrialConfig, examples: list[dict], dtype: str, stored_metrics: dict[str, float],
           metric: str, family: Family) -> dict:
    """Generate every example of `eval_examples.jsonl` with the model in `folder` as the card's snippet does; the
    counts and scores as written to `verification.json`."""
    regenerated = _generate(folder, examples, dtype, family)
    differ = [e["example_id"] for e, text in zip(examples, regenerated) if text != e["prediction"]]
    scored = metric if metric in _RESCORED else "rougeL"
    references = [e["references"] for e in examples]
    tokenizer = resolve_tokenizer(cfg.scoring.tokenizer, [r for refs in references for r in refs])

    def scores(texts: list[str]) -> list[float]:
        rows = score_examples(texts, references, tokenizer, cfg.scoring.references, cfg.scoring.stemming)
        return [row[scored] for row in rows]

    stored_scores = scores([e["prediction"] for e in examples])
    stored_interval = mean_interval(stored_scores).scaled(100.0)
    return {"identical": len(examples) - len(differ), "total": len(examples), "differ": differ,
            "loaded_as": f"{family.auto_class}.from_pretrained('merged', dtype={dtype!r}); "
                         "one prompt at a time, as the card's snippet",
            "metric": scored, "regenerated": 100.0 * _mean(scores(regenerated)),
            "stored": 100.0 * stored_metrics.get(scored, _mean(stored_scores)),
            "stored_interval_95": [stored_interval.low, stored_interval.high],
            "regenerated_predictions": {e["example_id"]: text for e, text in zip(examples, regenerated)}}


def write(folder: Path, found: dict) -> Path:
    path = folder / VERIFICATION
    path.write_text(json.dumps(found, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def summary_line(found: dict) -> str:
    """What the model card says of it."""
    low, high = found["stored_interval_95"]
    return (f"{found['identical']} of {found['total']} stored predictions reproduced exactly by `merged/` "
            f"({found['loaded_as']}); {found['metric']} of its own generations {found['regenerated']:.2f} against "
            f"the stored {found['stored']:.2f} (95% interval [{low:.1f}, {high:.1f}]). Details: `{VERIFICATION}`.")


def _generate(folder: Path, examples: list[dict], dtype: str, family: Family) -> list[str]:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = getattr(transformers, family.auto_class).from_pretrained(folder, dtype=dtype).eval()
    out = []
    for e in examples:
        inputs = tokenizer(e["prompt"], return_tensors="pt", add_special_tokens=e["add_special_tokens"])
        with torch.inference_mode():
            tokens = model.generate(**inputs, max_new_tokens=e["max_new_tokens"], do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, **e["generate_kwargs"])
        new = family.new_tokens(tokens[0], inputs["input_ids"].shape[1])
        out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
