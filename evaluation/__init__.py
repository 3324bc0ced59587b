"""Evaluation: generate summaries for fixed prompts and score them against references."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from statistics import fmean

from evaluation.generate import Generation, generate
from evaluation.metrics import BERTSCORE_METRICS
from evaluation.rouge import mean_scores, provenance, score_examples


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    """rouge1/rouge2/rougeL/rougeLsum (F1, 0-1), gen_tokens and gen_words (means per example)."""
    predictions: list[dict]
    """One row per example: example_id, prediction, references, new_tokens and its ROUGE scores."""
    scoring: dict = field(default_factory=dict)
    """How the metrics were computed (evaluation.rouge.provenance)."""


@dataclass(frozen=True)
class Scoring:
    """ROUGE settings of one evaluation, the tokenizer already resolved (never `auto`)."""

    tokenizer: str = "ascii"
    aggregation: str = "max"
    use_stemmer: bool = True
    reference_columns: tuple[str, ...] = ()
    bertscore_model: str | None = None
    decoding: str = "greedy"
    """How the summaries were decoded (GenerationConfig.describe); part of the provenance."""


@lru_cache(maxsize=1)
def _bert_scorer(path: str):
    from evaluation.bertscore import BertScorer

    return BertScorer(path)  # loaded once per worker, reused by interim and final evaluations


def evaluate(model, tokenizer, prompts: list[str], references: list[tuple[str, ...]], example_ids: list[str],
             max_new_tokens: int, batch_size: int, add_special_tokens: bool = True,
             scoring: Scoring = Scoring(), decoding: dict | None = None, on_prefill=None) -> EvalResult:
    """Generate (`on_prefill`: see `evaluation.generate.generate`), then score."""
    generations = generate(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens, decoding,
                           on_prefill=on_prefill)
    return score(generations, references, example_ids, scoring)


def score(generations: list[Generation], references: list[tuple[str, ...]], example_ids: list[str],
          scoring: Scoring = Scoring()) -> EvalResult:
    """ROUGE (and BERTScore when asked) of generated summaries against their references."""
    texts = [g.text for g in generations]
    per_example = score_examples(texts, references, scoring.tokenizer, scoring.aggregation, scoring.use_stemmer)
    metrics = mean_scores(per_example)
    metrics["gen_tokens"] = fmean(g.new_tokens for g in generations)
    metrics["gen_words"] = fmean(len(t.split()) for t in texts)
    how = provenance(scoring.tokenizer, scoring.aggregation, scoring.use_stemmer, list(scoring.reference_columns),
                     len(generations))
    how["decoding"] = scoring.decoding
    if scoring.bertscore_model:
        scorer = _bert_scorer(scoring.bertscore_model)
        for scores, values in zip(per_example, scorer.score(texts, references)):
            scores.update(values)
        metrics.update({k: fmean(s[k] for s in per_example) for k in BERTSCORE_METRICS})
        how["bertscore"] = scorer.name
    rows = [{"example_id": eid, "prediction": g.text, "references": list(refs), "new_tokens": g.new_tokens, **s}
            for eid, g, refs, s in zip(example_ids, generations, references, per_example)]
    return EvalResult(metrics=metrics, predictions=rows, scoring=how)
