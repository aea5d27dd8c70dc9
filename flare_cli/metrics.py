"""Task metrics: SQuAD-style exact match / token F1 that work beyond English, accuracy, macro-F1.

Pure Python, no heavy imports. Predictions of ``None`` are unparseable model outputs: they count as
wrong (never silently dropped) and are reported as ``n_unparseable``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Optional, Sequence

_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str, lang: str = "en") -> str:
    """NFKC, casefold, drop every Unicode punctuation character (category P*), collapse whitespace.

    English articles are removed only for ``lang == "en"``: SQuAD's article stripping would delete
    real words in other languages.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    if lang == "en":
        text = _ENGLISH_ARTICLES.sub(" ", text)
    return " ".join(text.split())


_UNSPACED_SCRIPTS = ("THAI", "LAO", "KHMER", "MYANMAR", "CJK", "HIRAGANA", "KATAKANA", "TIBETAN")


def _is_unspaced(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS)


def answer_tokens(text: str, lang: str = "en") -> list[str]:
    """Tokens for F1: whitespace words, except that scripts written without spaces (Thai, CJK...)
    contribute one token per character (MLQA's mixed segmentation); otherwise F1 on them would be
    all-or-nothing."""
    tokens: list[str] = []
    for word in normalize_answer(text, lang).split():
        run = ""
        for ch in word:
            if _is_unspaced(ch):
                if run:
                    tokens.append(run)
                    run = ""
                tokens.append(ch)
            else:
                run += ch
        if run:
            tokens.append(run)
    return tokens


def exact_match(prediction: Optional[str], gold: str, lang: str = "en") -> float:
    if prediction is None:
        return 0.0
    return float(normalize_answer(prediction, lang) == normalize_answer(gold, lang))


def token_f1(prediction: Optional[str], gold: str, lang: str = "en") -> float:
    """Bag-of-tokens F1 between normalized answers (SQuAD definition; two empty answers score 1)."""
    if prediction is None:
        return 0.0
    pred_tokens, gold_tokens = answer_tokens(prediction, lang), answer_tokens(gold, lang)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Sequence[Optional[str]], golds: Sequence[str], lang: str = "en") -> dict:
    """Mean exact match and token F1, in percent."""
    _check_lengths(predictions, golds)
    n = len(golds)
    em = sum(exact_match(p, g, lang) for p, g in zip(predictions, golds))
    f1 = sum(token_f1(p, g, lang) for p, g in zip(predictions, golds))
    return {
        "exact_match": 100.0 * em / n if n else 0.0,
        "f1": 100.0 * f1 / n if n else 0.0,
        "n": n,
        "n_unparseable": sum(p is None for p in predictions),
    }


def accuracy(predictions: Sequence[Optional[str]], golds: Sequence[str]) -> float:
    _check_lengths(predictions, golds)
    if not golds:
        return 0.0
    return 100.0 * sum(p is not None and p == g for p, g in zip(predictions, golds)) / len(golds)


def macro_f1(predictions: Sequence[Optional[str]], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (every class counts, even if never predicted).

    An unparseable prediction is a miss for its gold class and a false positive for no class.
    A class with no gold and no predicted instance scores 0 (scikit-learn's zero_division=0).
    """
    _check_lengths(predictions, golds)
    if not labels:
        return 0.0
    per_class = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(predictions, golds))
        fp = sum(p == label and g != label for p, g in zip(predictions, golds))
        fn = sum(p != label and g == label for p, g in zip(predictions, golds))
        per_class.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100.0 * sum(per_class) / len(per_class)


def classification_scores(
    predictions: Sequence[Optional[str]], golds: Sequence[str], labels: Sequence[str]
) -> dict:
    return {
        "accuracy": accuracy(predictions, golds),
        "macro_f1": macro_f1(predictions, golds, labels),
        "n": len(golds),
        "n_unparseable": sum(p is None for p in predictions),
    }


def _check_lengths(predictions: Sequence, golds: Sequence) -> None:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
