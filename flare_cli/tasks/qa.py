"""Extractive QA: TyDiQA-GoldP (``google-research-datasets/tydiqa``, config ``secondary_task``).

The Hub rows (parquet, no loading script) are ``id, title, context, question, answers{text,
answer_start}`` for all nine GoldP languages in one config, splits ``train`` and ``validation``; the
language is the id prefix (``swahili-...``), so rows are filtered by it. Every gold text is kept
(``answers``, a list) and scored as the official SQuAD v1.1 script does, taking the best gold; the
first one is ``answer`` (the training target) with its ``answer_start``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from flare_cli.errors import DataError, LanguageError
from flare_cli.tasks.base import Task
from flare_cli.tasks.templates import QA_TEMPLATE

# TyDiQA id prefix per ISO 639-1 code: the GoldP task's nine languages (TyDi QA's eleven minus Thai
# and Japanese, which the GoldP release leaves out).
TYDIQA_LANGUAGES = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "fi": "finnish",
    "id": "indonesian",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
}
ID_PREFIXES = (*TYDIQA_LANGUAGES.values(), "japanese", "thai")  # the primary task's ids too


def _id_language(row_id: str) -> Optional[str]:
    prefix = str(row_id).split("-", 1)[0]
    return prefix if prefix in ID_PREFIXES else None


def _iso1(lang: str) -> str:
    """``swh``/``swa``/``swh_Latn``/``sw-KE`` -> ``sw`` where the language registry knows the code."""
    try:
        from flare_cli.languages import resolve

        return resolve(lang).iso1 or lang
    except Exception:  # an unknown code simply matches nothing
        return lang


def _gold_texts(answers: Any) -> Optional[list[str]]:
    """Gold texts of an ``answers`` column: {"text": [...]} (Hub), [str, ...] or [{"text": ...}, ...]."""
    if isinstance(answers, dict):
        answers = answers.get("text")
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, (list, tuple)):
        texts = [a.get("text") if isinstance(a, dict) else a for a in answers]
        if all(isinstance(t, str) for t in texts):
            return list(texts)
    return None


def gold_answers(row: dict) -> list[str]:
    """All gold answers of a row: its ``answers`` list, or its single ``answer``.

    A row whose ``answer`` is not among its ``answers`` (e.g. a translate-train row whose answer was
    translated but whose list was not) is scored on ``answer`` alone."""
    answers = row.get("answers")
    answer = row.get("answer")
    if isinstance(answers, list) and answers and (answer is None or answer in answers):
        return answers
    return [answer] if isinstance(answer, str) else []


class QATask(Task):
    name = "qa"
    input_fields = ("context", "question")
    gold_field = "answer"
    template = QA_TEMPLATE
    hub_id = "google-research-datasets/tydiqa"
    default_split = "validation"  # TyDiQA-GoldP has no public test split
    primary_metric = "exact_match"
    qa_metric: Optional[str] = None  # None: squad (flare_cli.metrics.default_qa_metric)

    def hub_config(self, lang: str) -> Optional[str]:
        if _iso1(lang) not in TYDIQA_LANGUAGES:
            raise LanguageError(
                f"TyDiQA-GoldP has no language {lang!r} (available: {', '.join(sorted(TYDIQA_LANGUAGES))}); "
                "pass your own data with --data FILE"
            )
        return "secondary_task"

    def from_source(self, record: dict, index: int, lang: str, split: str) -> Optional[dict]:
        row = super().from_source(record, index, lang, split)
        # Ids with a TyDiQA language prefix select the language; other ids (own data) are kept.
        id_lang = _id_language(row["id"])
        if id_lang is not None and id_lang != TYDIQA_LANGUAGES.get(_iso1(lang)):
            return None
        answers = row.pop("answers", None)
        texts = _gold_texts(answers)
        if answers is not None and texts is None:
            raise DataError(f"row {row['id']!r}: 'answers' must be a list of strings, a list of "
                            "{'text': ...} or {'text': [...], 'answer_start': [...]}")
        if texts:
            row["answers"] = texts
            row.setdefault("answer", texts[0])
            starts = answers.get("answer_start") if isinstance(answers, dict) else None
            if isinstance(answers, list) and isinstance(answers[0], dict):
                starts = [answers[0].get("answer_start")]
            if starts and starts[0] is not None:
                row.setdefault("answer_start", starts[0])
        return row

    def _languages_hint(self, records: list[dict]) -> str:
        present = sorted({lang for r in records if (lang := _id_language(r.get("id", "")))})
        return f" (languages present: {', '.join(present)})" if present else ""

    def parse(self, generated: str) -> Optional[str]:
        """The first line of the output, stripped; an empty answer is unparseable."""
        answer = generated.split("\n", 1)[0].strip()
        return answer or None

    def scheme(self, lang: str) -> str:
        from flare_cli.metrics import check_qa_metric, default_qa_metric

        return check_qa_metric(self.qa_metric) if self.qa_metric else default_qa_metric(self.name, lang)

    def is_correct(self, prediction: Optional[str], row: dict, lang: str) -> bool:
        from flare_cli.metrics import exact_match

        return exact_match(prediction, gold_answers(row), lang, self.scheme(lang)) == 1.0

    def score(self, predictions: Sequence[Optional[str]], rows: Sequence[dict], *, lang: str = "") -> dict:
        from flare_cli.metrics import qa_scores

        scores = qa_scores(predictions, [gold_answers(r) for r in rows], lang, self.scheme(lang))
        return {"metric": self.primary_metric, "value": scores[self.primary_metric], **scores}
