"""ROUGE-1/2/L/Lsum F1 with rouge-score (Porter stemming), per example and averaged."""

from __future__ import annotations

import re
from statistics import fmean

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentence_lines(text: str) -> str:
    """One sentence per line: rougeLsum computes summary-level LCS over newline-separated sentences.

    A regex split rather than rouge-score's nltk option, whose sentence model is a download.
    """
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def score_examples(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """F1 of each prediction against its reference, one dict of ROUGE_TYPES per example."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"predictions and references must pair up; got {len(predictions)} "
                         f"predictions and {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [{name: score.fmeasure for name, score in
             scorer.score(sentence_lines(ref), sentence_lines(pred)).items()}
            for pred, ref in zip(predictions, references)]


def mean_scores(per_example: list[dict[str, float]]) -> dict[str, float]:
    return {name: fmean(s[name] for s in per_example) for name in ROUGE_TYPES} if per_example else {}
