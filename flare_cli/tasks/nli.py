"""NLI: XNLI (``facebook/xnli``, parquet, one config per language code such as ``sw``, plus
``all_languages``).

Hub rows are ``premise, hypothesis, label`` with label 0/1/2 = entailment/neutral/contradiction and
no id, splits ``train`` (392,702: MultiNLI machine-translated), ``validation`` (2,490) and ``test``
(5,010, human-translated); rows get ``<lang>-<split>-<index>`` ids.
"""

from __future__ import annotations

from typing import Optional

from flare_cli.errors import LanguageError
from flare_cli.tasks.base import ClassificationTask
from flare_cli.tasks.templates import NLI_LABELS, NLI_TEMPLATE

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")


class NLITask(ClassificationTask):
    name = "nli"
    input_fields = ("premise", "hypothesis")
    gold_field = "label"
    labels = NLI_LABELS
    template = NLI_TEMPLATE
    hub_id = "facebook/xnli"
    primary_metric = "accuracy"

    def hub_config(self, lang: str) -> Optional[str]:
        from flare_cli.tasks.qa import _iso1

        lang = _iso1(lang)
        if lang not in XNLI_LANGUAGES:
            raise LanguageError(
                f"XNLI has no language {lang!r} (available: {', '.join(XNLI_LANGUAGES)}); "
                "pass your own data with --data FILE"
            )
        return lang

    def from_source(self, record: dict, index: int, lang: str, split: str) -> Optional[dict]:
        from flare_cli.tasks.qa import _iso1

        row = dict(record)
        row.setdefault("id", f"{_iso1(lang)}-{split}-{index}")
        return row
