"""Extractive QA: TyDiQA-GoldP (``google-research-datasets/tydiqa``, config ``secondary_task``).

The Hub rows are ``id, title, context, question, answers{text, answer_start}`` for all languages in
one config; the language is the id prefix (``swahili-...``), so rows are filtered by it. The gold
``answer`` is the first gold text. Scored by exact match / token F1 on the answer only.
"""

from __future__ import annotations

from typing import Optional, Sequence

from flare_cli.errors import LanguageError
from flare_cli.tasks.base import Task
from flare_cli.tasks.templates import QA_TEMPLATE

# TyDiQA id prefix per ISO 639-1 code (the GoldP task's eleven languages).
TYDIQA_LANGUAGES = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "fi": "finnish",
    "id": "indonesian",
    "ja": "japanese",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
    "th": "thai",
}


def _id_language(row_id: str) -> Optional[str]:
    prefix = str(row_id).split("-", 1)[0]
    return prefix if prefix in TYDIQA_LANGUAGES.values() else None


class QATask(Task):
    name = "qa"
    input_fields = ("context", "question")
    gold_field = "answer"
    template = QA_TEMPLATE
    hub_id = "google-research-datasets/tydiqa"
    default_split = "validation"  # TyDiQA-GoldP has no public test split
    primary_metric = "exact_match"

    def hub_config(self, lang: str) -> Optional[str]:
        if lang not in TYDIQA_LANGUAGES:
            raise LanguageError(
                f"TyDiQA-GoldP has no language {lang!r} (available: {', '.join(sorted(TYDIQA_LANGUAGES))}); "
                "pass your own data with --data FILE"
            )
        return "secondary_task"

    def from_source(self, record: dict, index: int, lang: str, split: str) -> Optional[dict]:
        row = super().from_source(record, index, lang, split)
        # Ids with a TyDiQA language prefix select the language; other ids (own data) are kept.
        id_lang = _id_language(row["id"])
        if id_lang is not None and id_lang != TYDIQA_LANGUAGES.get(lang):
            return None
        answers = row.pop("answers", None)
        if isinstance(answers, dict) and answers.get("text"):
            row.setdefault("answer", answers["text"][0])
            starts = answers.get("answer_start") or []
            if starts:
                row.setdefault("answer_start", starts[0])
        return row

    def _languages_hint(self, records: list[dict]) -> str:
        present = sorted({lang for r in records if (lang := _id_language(r.get("id", "")))})
        return f" (languages present: {', '.join(present)})" if present else ""

    def parse(self, generated: str) -> Optional[str]:
        """The first line of the output, stripped; an empty answer is unparseable."""
        answer = generated.split("\n", 1)[0].strip()
        return answer or None

    def is_correct(self, prediction: Optional[str], row: dict, lang: str) -> bool:
        from flare_cli.metrics import exact_match

        return exact_match(prediction, row[self.gold_field], lang) == 1.0

    def score(self, predictions: Sequence[Optional[str]], rows: Sequence[dict], *, lang: str = "") -> dict:
        from flare_cli.metrics import qa_scores

        scores = qa_scores(predictions, [r[self.gold_field] for r in rows], lang)
        return {"metric": self.primary_metric, "value": scores[self.primary_metric], **scores}
