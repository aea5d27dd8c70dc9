"""Sentiment: NusaX-senti (``indonlp/NusaX-senti``, one config per ISO 639-3 code such as ``jav``).

The card lists twelve languages (ace ban bbc bjn bug eng ind jav mad min nij sun), splits ``train``
(500), ``validation`` (100), ``test`` (400) per language, columns ``id, text, lang, label`` with label
0/1/2 = negative/neutral/positive. The repository holds a loading script, which ``datasets`` >= 4
no longer runs, so the rows come from the Hub's parquet export (``refs/convert/parquet``,
``<config>/...``). A local file in the same schema with a ``lang`` column holding several
languages is filtered by it.
"""

from __future__ import annotations

from typing import Optional

from flare_cli.errors import LanguageError
from flare_cli.tasks.base import ClassificationTask
from flare_cli.tasks.templates import SENTIMENT_LABELS, SENTIMENT_TEMPLATE

# NusaX config (ISO 639-3) -> the language's name in the card.
NUSAX_LANGUAGES = {
    "ace": "acehnese",
    "ban": "balinese",
    "bbc": "toba_batak",
    "bjn": "banjarese",
    "bug": "buginese",
    "eng": "english",
    "ind": "indonesian",
    "jav": "javanese",
    "mad": "madurese",
    "min": "minangkabau",
    "nij": "ngaju",
    "sun": "sundanese",
}
_ISO1 = {"en": "eng", "id": "ind", "jv": "jav", "su": "sun"}


def nusax_config(lang: str) -> Optional[str]:
    """``jv``/``jav``/``jav_Latn``/``javanese`` -> ``jav``; None for a language NusaX lacks."""
    code = lang.strip().lower()
    if code in NUSAX_LANGUAGES.values():
        return next(k for k, v in NUSAX_LANGUAGES.items() if v == code)
    code = code.replace("-", "_").split("_", 1)[0]
    code = _ISO1.get(code, code)
    return code if code in NUSAX_LANGUAGES else None


class SentimentTask(ClassificationTask):
    name = "sentiment"
    input_fields = ("text",)
    gold_field = "label"
    labels = SENTIMENT_LABELS
    template = SENTIMENT_TEMPLATE
    hub_id = "indonlp/NusaX-senti"
    primary_metric = "macro_f1"  # the paper reports NusaX macro-F1

    def hub_config(self, lang: str) -> Optional[str]:
        config = nusax_config(lang)
        if config is None:
            raise LanguageError(
                f"NusaX-senti has no language {lang!r} (available: {', '.join(NUSAX_LANGUAGES)}); "
                "pass your own data with --data FILE"
            )
        return config

    def from_source(self, record: dict, index: int, lang: str, split: str) -> Optional[dict]:
        row = super().from_source(record, index, lang, split)
        row_lang = row.get("lang")
        if isinstance(row_lang, str):
            config = nusax_config(lang)
            if row_lang.strip().lower() not in {lang.lower(), config, NUSAX_LANGUAGES.get(config or "")}:
                return None
        return row

    def _languages_hint(self, records: list[dict]) -> str:
        present = sorted({r["lang"] for r in records if isinstance(r.get("lang"), str)})
        return f" (languages present: {', '.join(present)})" if present else ""
