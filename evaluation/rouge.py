"""ROUGE-1/2/L/Lsum F1 with rouge-score, per example against every reference, and averaged.

rouge-score's own tokenizer lowercases and replaces every character outside [a-z0-9] with a space:
Korean, Chinese or Japanese text (and accented Latin letters) vanish and score 0. The `unicode`
tokenizer keeps letters and digits of every script, one token per CJK ideograph or kana (those
scripts put no spaces between words), and on ASCII text gives exactly rouge-score's tokens. The
`korean` tokenizer scores morphemes, as Korean summarization tasks do (kiwipiepy's analyzer).

`rouge_sum` is ROUGE-1 + ROUGE-2 + ROUGE-L F1 of each example (each already combined over its references);
with `mean` over the references it is the Korean dialogue-summarization competition's score.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import version
from statistics import fmean

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_SUM = "rouge_sum"
_SUMMED = ("rouge1", "rouge2", "rougeL")
TOKENIZERS = ("auto", "ascii", "unicode", "korean")
# Kiwi's punctuation and symbol tags, which Korean ROUGE leaves out.
_KIWI_DROPPED = frozenset({"SF", "SP", "SS", "SE", "SO", "SW"})
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_LETTER = re.compile(r"[^\W\d_]")
AGGREGATIONS = ("max", "mean", "first")
# Latin stops need a following space (so 3.5 stays whole); CJK full stops do not.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*(?=\S)")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and Han ideographs
_CJK_SPLIT = re.compile(f"[{_CJK}]|[^{_CJK}]+")
_NON_ASCII_WORD = re.compile(r"[^\W\d_a-zA-Z]")
LSUM_SPLIT_NOTE = "one sentence per line, split after . ! ? (and 。！？)"


class UnicodeTokenizer:
    """rouge-score's tokenizer contract (`tokenize(text) -> list[str]`) for text in any script."""

    def __init__(self, use_stemmer: bool):
        from rouge_score.tokenizers import DefaultTokenizer

        self._stem = DefaultTokenizer(use_stemmer=True)._stemmer if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = [piece for word in _WORD.findall(text.lower()) for piece in _CJK_SPLIT.findall(word)]
        if self._stem is None:
            return tokens
        # As rouge-score: Porter stemming of ASCII words longer than 3 characters only.
        return [self._stem.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


class KoreanTokenizer:
    """Morphemes: the `form` of each token `Kiwi().tokenize(text)` returns with its default options, without
    punctuation and symbols (tags SF, SP, SS, SE, SO, SW), lowercased, no stemming."""

    def tokenize(self, text: str) -> list[str]:
        return [t.form.lower() for t in _kiwi().tokenize(text) if t.tag not in _KIWI_DROPPED]


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()  # ~2 s to load its model: once per process


def korean_analyzer() -> str:
    return f"kiwipiepy {version('kiwipiepy')} (model {version('kiwipiepy_model')}), morpheme forms"


def resolve_tokenizer(name: str, texts: list[str]) -> str:
    """`auto` -> `korean` when most letters are Hangul, `ascii` for ASCII-only text, else `unicode`;
    `ascii` on other text is an error."""
    foreign = next((t for t in texts if _NON_ASCII_WORD.search(t)), None)
    if name == "auto":
        letters = sum(len(_LETTER.findall(t)) for t in texts)
        if letters and sum(len(_HANGUL.findall(t)) for t in texts) > letters / 2:
            return "korean"
        return "unicode" if foreign else "ascii"
    if name == "ascii" and foreign is not None:
        raise ValueError(f"the ascii tokenizer deletes every non-ASCII letter, so this text would score 0 or "
                         f"partly: {foreign[:60]!r}. Fix: set scoring.tokenizer: unicode (or auto)")
    return name


def sentence_lines(text: str) -> str:
    """One sentence per line: rougeLsum computes summary-level LCS over newline-separated sentences.

    A regex split rather than rouge-score's nltk option, whose sentence model is a download.
    """
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip())


def score_examples(predictions: list[str], references: list[str] | list[list[str]], tokenizer: str = "ascii",
                   aggregation: str = "max", use_stemmer: bool = True) -> list[dict[str, float]]:
    """F1 of each prediction against its references, one dict of ROUGE_TYPES per example.

    With several references per example, `max` keeps the best-matching reference per ROUGE type
    (rouge-score's `score_multi`), `mean` averages over them, `first` scores the first only.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"predictions and references must pair up; got {len(predictions)} "
                         f"predictions and {len(references)} references")
    custom = {"unicode": lambda: UnicodeTokenizer(use_stemmer), "korean": KoreanTokenizer}.get(tokenizer, lambda: None)()
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer, tokenizer=custom)
    out = []
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)[:1 if aggregation == "first" else None]
        each = [scorer.score(sentence_lines(ref), sentence_lines(prediction)) for ref in refs]
        combine = max if aggregation == "max" else fmean
        scores = {name: combine(s[name].fmeasure for s in each) for name in ROUGE_TYPES}
        scores[ROUGE_SUM] = sum(scores[name] for name in _SUMMED)
        out.append(scores)
    return out


def mean_scores(per_example: list[dict[str, float]]) -> dict[str, float]:
    names = (*ROUGE_TYPES, ROUGE_SUM)
    return {name: fmean(s[name] for s in per_example) for name in names} if per_example else {}


def provenance(tokenizer: str, aggregation: str, use_stemmer: bool, reference_columns: list[str],
               examples: int) -> dict:
    """How the scores were computed; two results compare only when these agree."""
    refs = reference_columns[:1] if aggregation == "first" else reference_columns
    korean = tokenizer == "korean"
    return {"metric": f"rouge-score {version('rouge-score')} F1",
            "tokenizer": f"korean: {korean_analyzer()}" if korean else tokenizer,
            "stemming": "porter" if use_stemmer and not korean else "none", "lsum_split": LSUM_SPLIT_NOTE,
            "references": f"{aggregation} over {', '.join(refs)}" if len(refs) > 1 else refs[0] if refs else "-",
            "eval_examples": examples}
