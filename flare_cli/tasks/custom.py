"""A task over any local JSONL/CSV/parquet (or Hub dataset) with named columns.

``get_task("custom", input_fields=["question"], labels=None, gold_field="answer", template=None)``:
with ``labels`` the answer is a label word (accuracy, macro-F1); without, it is free text scored like
QA (exact match, token F1). The default template is one ``Field: {field}`` line per input field and
the shared ``Answer:`` tail.
"""

from __future__ import annotations

import string
from typing import Optional, Sequence

from flare_cli.errors import ConfigError
from flare_cli.tasks.base import PIVOT_PREFIX, ClassificationTask, Task
from flare_cli.tasks.qa import QATask
from flare_cli.tasks.templates import ANSWER_TAIL


def default_template(input_fields: Sequence[str]) -> str:
    lines = [f"{field.replace('_', ' ').capitalize()}: {{{field}}}" for field in input_fields]
    return "\n".join(lines) + ANSWER_TAIL


class _FreeTextCustomTask(Task):
    primary_metric = "exact_match"
    qa_metric = None  # None: squad for English, mlqa otherwise
    parse = QATask.parse
    scheme = QATask.scheme
    is_correct = QATask.is_correct
    score = QATask.score


class _LabelCustomTask(ClassificationTask):
    primary_metric = "accuracy"


def make_custom_task(
    input_fields: Optional[Sequence[str]] = None,
    *,
    labels: Optional[Sequence[str]] = None,
    gold_field: Optional[str] = None,
    template: Optional[str] = None,
) -> Task:
    if not input_fields:
        raise ConfigError("task 'custom' needs its input columns, e.g. --fields question,context")
    fields = tuple(input_fields)
    if any(f.startswith(PIVOT_PREFIX) or f in ("id",) for f in fields):
        raise ConfigError("custom input fields must be target-language columns (not 'id' or 'pivot_*')")
    template = template or default_template(fields)
    if not template.endswith(ANSWER_TAIL):
        raise ConfigError(f"custom template must end with {ANSWER_TAIL!r}")
    placeholders = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if placeholders != set(fields):
        raise ConfigError(
            f"custom template placeholders {sorted(placeholders)} must be exactly the input fields {sorted(fields)}"
        )
    base = _LabelCustomTask if labels else _FreeTextCustomTask
    task = base()
    task.name = "custom"
    task.input_fields = fields
    task.template = template
    task.hub_id = None
    if labels:
        task.labels = tuple(label.strip().casefold() for label in labels)
        task.gold_field = gold_field or "label"
    else:
        task.gold_field = gold_field or "answer"
    return task
