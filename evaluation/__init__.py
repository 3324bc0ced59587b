"""Evaluation: generate summaries for fixed prompts and score them against references."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from evaluation.generate import generate
from evaluation.rouge import ROUGE_TYPES, mean_scores, score_examples

# Final metrics of every trial; any of them can rank a leaderboard column or be a study objective.
METRIC_NAMES = (*ROUGE_TYPES, "gen_tokens", "gen_words")
SCORED_REFERENCE_NOTE = "ROUGE F1 against the first reference of each eval example"


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    """rouge1/rouge2/rougeL/rougeLsum (F1, 0-1), gen_tokens and gen_words (means per example)."""
    predictions: list[dict]
    """One row per example: example_id, prediction, reference, new_tokens and its ROUGE scores."""


def evaluate(model, tokenizer, prompts: list[str], references: list[str], example_ids: list[str],
             max_new_tokens: int, batch_size: int, add_special_tokens: bool = True) -> EvalResult:
    generations = generate(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens)
    texts = [g.text for g in generations]
    per_example = score_examples(texts, references)
    metrics = mean_scores(per_example)
    metrics["gen_tokens"] = fmean(g.new_tokens for g in generations)
    metrics["gen_words"] = fmean(len(t.split()) for t in texts)
    rows = [{"example_id": eid, "prediction": g.text, "reference": ref, "new_tokens": g.new_tokens, **s}
            for eid, g, ref, s in zip(example_ids, generations, references, per_example)]
    return EvalResult(metrics=metrics, predictions=rows)
