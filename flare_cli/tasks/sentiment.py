"""Sentiment: NusaX-senti (``indonlp/NusaX-senti``, one config per language name such as ``javanese``).

Hub rows are ``id, text, lang, label`` with label 0/1/2 = negative/neutral/positive. A local file
in the same schema with a ``lang`` column holding several languages is filtered by it.
"""

from __future__ import annotations

from typing import Optional

from flare_cli.errors import LanguageError
from flare_cli.tasks.base import ClassificationTask
from flare_cli.tasks.templates import SENTIMENT_LABELS, SENTIMENT_TEMPLATE

# NusaX config name per language code (ISO 639-1 where one exists, else ISO 639-3).
NUSAX_LANGUAGES = {
    "ace": "acehnese",
    "ban": "balinese",
    "bbc": "toba_batak",
    "bjn": "banjarese",
    "bug": "buginese",
    "en": "english",
    "id": "indonesian",
    "jv": "javanese",
    "mad": "madurese",
    "min": "minangkabau",
    "nij": "ngaju",
    "su": "sundanese",
}


class SentimentTask(ClassificationTask):
    name = "sentiment"
    input_fields = ("text",)
    gold_field = "label"
    labels = SENTIMENT_LABELS
    template = SENTIMENT_TEMPLATE
    hub_id = "indonlp/NusaX-senti"
    primary_metric = "macro_f1"  # the paper reports NusaX macro-F1

    def hub_config(self, lang: str) -> Optional[str]:
        if lang not in NUSAX_LANGUAGES:
            raise LanguageError(
                f"NusaX-senti has no language {lang!r} (available: {', '.join(sorted(NUSAX_LANGUAGES))}); "
                "pass your own data with --data FILE"
            )
        return NUSAX_LANGUAGES[lang]

    def from_source(self, record: dict, index: int, lang: str, split: str) -> Optional[dict]:
        row = super().from_source(record, index, lang, split)
        row_lang = row.get("lang")
        if isinstance(row_lang, str) and row_lang not in (lang, NUSAX_LANGUAGES.get(lang)):
            return None
        return row

    def _languages_hint(self, records: list[dict]) -> str:
        present = sorted({r["lang"] for r in records if isinstance(r.get("lang"), str)})
        return f" (languages present: {', '.join(present)})" if present else ""
