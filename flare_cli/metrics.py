"""Task metrics: QA exact match / token F1 under named scoring schemes, accuracy, macro-F1, and MT
quality (chrF, chrF++, BLEU) through sacrebleu.

QA scoring schemes (``--qa-metric``), each a published definition so scores sit beside the literature:

- ``squad``: the official SQuAD v1.1 evaluation script (also TyDiQA-GoldP's and XQuAD's): lower-case,
  delete ``string.punctuation`` characters, delete the words a/an/the, split on whitespace; exact
  match and bag-of-tokens F1, each the maximum over all gold answers.
- ``mlqa``: the MLQA evaluation script (mlqa_evaluation_v1.py): lower-case, delete every Unicode
  punctuation character (category P*) and ``string.punctuation``, delete that language's articles
  (en, es, vi, de, ar; none for hi, zh), split on whitespace, except zh, whose CJK ideographs are one
  token each (mixed segmentation). Languages outside MLQA's seven, which the script refuses, are
  scored like hi: no articles, whitespace tokens.
- ``unicode``: flare_cli's own (not comparable with published numbers): NFKC, casefold, Unicode
  punctuation replaced by spaces, English articles for ``en`` only, and one token per character in
  scripts written without spaces (Thai, Lao, Khmer, Myanmar, CJK, kana, Tibetan), so partial answers
  in those scripts get partial F1.

Pure Python, no heavy imports. Predictions of ``None`` are unparseable model outputs: they count as
wrong (never silently dropped) and are reported as ``n_unparseable``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Optional, Sequence, Union

from flare_cli.errors import ConfigError

QA_METRICS = ("squad", "mlqa", "unicode")
Golds = Union[str, Sequence[str]]

# -- squad: evaluate-v1.1.py ----------------------------------------------------------------------
_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ENGLISH_ARTICLES.sub(" ", text).split())


# -- mlqa: mlqa_evaluation_v1.py ------------------------------------------------------------------
MLQA_LANGUAGES = ("en", "es", "hi", "vi", "de", "ar", "zh")
_MLQA_ARTICLES = {
    "en": _ENGLISH_ARTICLES,
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    # The script's pattern is '\sال^|ال': the first branch can never match, so every "ال" goes.
    "ar": re.compile("ال"),
}
_MLQA_CJK = re.compile(r"[\u4e00-\u9fa5]")


def _is_mlqa_punct(ch: str) -> bool:
    """MLQA's PUNCT: every Unicode P* character plus ASCII ``string.punctuation`` ($ + < = > ^ ` | ~ too)."""
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def _mlqa_language(lang: str) -> str:
    """``lang`` as MLQA's two-letter code (``zho``/``zh-CN``/``zho_Hans`` -> ``zh``) when it is one of its seven."""
    code = (lang or "").strip()
    if code.lower() in MLQA_LANGUAGES:
        return code.lower()
    try:
        from flare_cli.languages import resolve

        iso1 = resolve(code).iso1
    except Exception:  # unknown or empty codes simply get the article-free rule
        return code.lower()
    return iso1 or code.lower()


def _mlqa_tokens(text: str, lang: str) -> list[str]:
    lang = _mlqa_language(lang)
    text = "".join(ch for ch in text.lower() if not _is_mlqa_punct(ch))
    articles = _MLQA_ARTICLES.get(lang)
    if articles is not None:
        text = articles.sub(" ", text)
    if lang != "zh":
        return text.split()
    tokens: list[str] = []
    run = ""
    for ch in text:  # mixed segmentation: each CJK ideograph is a token, the rest split on spaces
        if _MLQA_CJK.match(ch) or _is_mlqa_punct(ch):
            tokens += run.split()
            run = ""
            tokens.append(ch)
        else:
            run += ch
    return tokens + run.split()


# -- unicode: flare_cli's own ---------------------------------------------------------------------
_UNSPACED_SCRIPTS = ("THAI", "LAO", "KHMER", "MYANMAR", "CJK", "HIRAGANA", "KATAKANA", "TIBETAN")


def _unicode_normalize(text: str, lang: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    if lang == "en":
        text = _ENGLISH_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _unicode_tokens(text: str, lang: str) -> list[str]:
    tokens: list[str] = []
    for word in _unicode_normalize(text, lang).split():
        run = ""
        for ch in word:
            if unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS):
                if run:
                    tokens.append(run)
                    run = ""
                tokens.append(ch)
            else:
                run += ch
        if run:
            tokens.append(run)
    return tokens


# -- the shared QA interface ----------------------------------------------------------------------
def check_qa_metric(scheme: str) -> str:
    if scheme not in QA_METRICS:
        raise ConfigError(f"unknown QA metric {scheme!r} (choose from {', '.join(QA_METRICS)})")
    return scheme


def default_qa_metric(task: str, lang: str) -> str:
    """``squad`` for TyDiQA-GoldP (its official scoring) and for English; ``mlqa`` for other languages."""
    if task == "qa" or _mlqa_language(lang) == "en":
        return "squad"
    return "mlqa"


def normalize_answer(text: str, lang: str = "en", scheme: str = "squad") -> str:
    """The answer as the scheme compares it for exact match."""
    if scheme == "squad":
        return _squad_normalize(text)
    if scheme == "mlqa":
        return " ".join(_mlqa_tokens(text, lang))
    check_qa_metric(scheme)
    return _unicode_normalize(text, lang)


def answer_tokens(text: str, lang: str = "en", scheme: str = "squad") -> list[str]:
    """The tokens the scheme's F1 counts."""
    if scheme == "squad":
        return _squad_normalize(text).split()
    if scheme == "mlqa":
        return _mlqa_tokens(text, lang)
    check_qa_metric(scheme)
    return _unicode_tokens(text, lang)


def _as_list(golds: Golds) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def _single_f1(pred_tokens: list[str], gold_tokens: list[str], scheme: str) -> float:
    if scheme == "unicode" and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    # SQuAD v1.1 / MLQA: no shared token (two empty answers included) scores 0
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: Optional[str], golds: Golds, lang: str = "en", scheme: str = "squad") -> float:
    """1.0 when the normalized prediction equals any normalized gold answer."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction, lang, scheme)
    return max((float(pred == normalize_answer(g, lang, scheme)) for g in _as_list(golds)), default=0.0)


def token_f1(prediction: Optional[str], golds: Golds, lang: str = "en", scheme: str = "squad") -> float:
    """Bag-of-tokens F1, the maximum over the gold answers."""
    if prediction is None:
        return 0.0
    pred = answer_tokens(prediction, lang, scheme)
    return max((_single_f1(pred, answer_tokens(g, lang, scheme), scheme) for g in _as_list(golds)), default=0.0)


def qa_scores(
    predictions: Sequence[Optional[str]], golds: Sequence[Golds], lang: str = "en", scheme: str = "squad"
) -> dict:
    """Mean exact match and token F1 in percent; each row's gold may be one answer or a list."""
    check_qa_metric(scheme)
    _check_lengths(predictions, golds)
    n = len(golds)
    em = sum(exact_match(p, g, lang, scheme) for p, g in zip(predictions, golds))
    f1 = sum(token_f1(p, g, lang, scheme) for p, g in zip(predictions, golds))
    return {
        "exact_match": 100.0 * em / n if n else 0.0,
        "f1": 100.0 * f1 / n if n else 0.0,
        "qa_metric": scheme,
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


# -- MT quality -----------------------------------------------------------------------------------
def mt_scores(hypotheses: Sequence[str], references: Sequence[str], *, target_lang: str = "") -> dict:
    """Corpus chrF (chrF2), chrF++ (word bigrams too) and BLEU from sacrebleu, with their signatures.

    BLEU uses sacrebleu's ``zh`` tokenizer for Chinese targets and ``13a`` otherwise; for other
    unspaced scripts (ja, th...) read chrF, not BLEU.
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} translations for {len(references)} references")
    tokenize = "zh" if _mlqa_language(target_lang) == "zh" else "13a"
    refs = [list(references)]
    scores: dict = {"n": len(hypotheses), "signatures": {}}
    for name, metric in (("chrf", CHRF()), ("chrf++", CHRF(word_order=2)), ("bleu", BLEU(tokenize=tokenize))):
        result = metric.corpus_score(list(hypotheses), refs)
        scores[name] = result.score
        scores["signatures"][name] = str(metric.get_signature())
    return scores


def reference_texts(rows: Sequence[dict], fields: Sequence[str], references: str) -> dict[str, dict[str, str]]:
    """{field: {row id: reference}} for `flare translate --references`, checked before any translating.

    ``references`` is a column of the input rows (one translated field), ``field=column,...`` pairs,
    or a ``.txt`` file with one reference per input row (one translated field)."""
    from pathlib import Path

    from flare_cli.errors import DataError

    fields = list(fields)
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    if references.endswith(".txt") or (Path(references).is_file() and "=" not in references):
        if len(fields) != 1:
            raise ConfigError(f"--references {references}: a text file scores one field, but {len(fields)} "
                              "are translated; use field=column pairs")
        if not Path(references).is_file():
            raise DataError(f"--references {references}: no such file")
        lines = Path(references).read_text(encoding="utf-8").splitlines()
        if len(lines) != len(rows):
            raise DataError(f"--references {references}: {len(lines)} lines for {len(rows)} rows")
        return {fields[0]: dict(zip(ids, lines))}
    pairs = [p.strip() for p in references.split(",") if p.strip()]
    if len(pairs) == 1 and "=" not in pairs[0]:
        if len(fields) != 1:
            raise ConfigError(f"--references {references}: name a column per field (field=column,...) "
                              f"for {', '.join(fields)}")
        pairs = [f"{fields[0]}={pairs[0]}"]
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        field, _, column = pair.partition("=")
        if field not in fields or not column:
            raise ConfigError(f"--references: {pair!r} is not field=column for a translated field ({', '.join(fields)})")
        for row_id, row in zip(ids, rows):
            if not isinstance(row.get(column), str):
                raise DataError(f"--references: row {row_id!r} has no text in column {column!r}")
        out[field] = {row_id: row[column] for row_id, row in zip(ids, rows)}
    return out


def reference_scores(
    rows: Sequence[dict], references: dict[str, dict[str, str]], direction: str, *, target_lang: str = ""
) -> dict:
    """{field: mt_scores} of translated rows (``f``, or ``pivot_f`` for ``--direction test``) against
    ``reference_texts``; rows are matched by id, so rows dropped on the way are left out of both."""
    from flare_cli.tasks.base import PIVOT_PREFIX

    scores = {}
    for field, by_id in references.items():
        column = field if direction == "train" else PIVOT_PREFIX + field
        kept = [r for r in rows if str(r.get("id")) in by_id]
        scores[field] = mt_scores([r[column] for r in kept], [by_id[str(r["id"])] for r in kept],
                                  target_lang=target_lang)
    return scores
