"""ROUGE against hand-counted values."""

from __future__ import annotations

import pytest

from evaluation.rouge import mean_scores, score_examples, sentence_lines


def test_unigram_bigram_lcs_by_hand():
    # pred: the cat sat on the mat / ref: the cat is on the mat
    # unigrams: 5 of 6 match both ways -> F1 5/6; bigrams: the-cat, on-the, the-mat = 3 of 5 -> 0.6;
    # LCS "the cat on the mat" = 5 -> 5/6.
    [s] = score_examples(["the cat sat on the mat"], ["the cat is on the mat"])
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)


def test_stemming_is_on():
    # Porter stems running -> run, dogs -> dog: a full match only with stemming.
    [s] = score_examples(["running dogs"], ["run dog"])
    assert s["rouge1"] == pytest.approx(1.0)


def test_rouge_lsum_uses_sentence_splits():
    # pred "a b. c d." vs ref "c d. a b.": plain LCS is 2 of 4 tokens (0.5); summary-level LCS
    # matches each reference sentence fully (4 of 4).
    [s] = score_examples(["Alpha beta. Gamma delta."], ["Gamma delta. Alpha beta."])
    assert s["rougeL"] == pytest.approx(0.5)
    assert s["rougeLsum"] == pytest.approx(1.0)
    assert sentence_lines("One. Two! Three?") == "One.\nTwo!\nThree?"


def test_mean_and_pairing():
    scores = score_examples(["a b", "c d"], ["a b", "x y"])
    assert mean_scores(scores)["rouge1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pair up; got 2 predictions and 1 references"):
        score_examples(["a", "b"], ["a"])
