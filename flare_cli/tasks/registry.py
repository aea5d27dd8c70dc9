"""``--task`` names to Task objects."""

from __future__ import annotations

from flare_cli.errors import ConfigError
from flare_cli.tasks.base import Task
from flare_cli.tasks.custom import make_custom_task
from flare_cli.tasks.nli import NLITask
from flare_cli.tasks.qa import QATask
from flare_cli.tasks.sentiment import SentimentTask

_BUILTIN = {"qa": QATask, "nli": NLITask, "sentiment": SentimentTask}
TASK_NAMES = (*_BUILTIN, "custom")


def get_task(name: str, **opts) -> Task:
    """A fresh task. Only ``custom`` takes options (input_fields, labels, gold_field, template)."""
    if name == "custom":
        return make_custom_task(**opts)
    if name not in _BUILTIN:
        raise ConfigError(f"unknown task {name!r} (choose from {', '.join(TASK_NAMES)})")
    given = {k for k, v in opts.items() if v}
    if given:
        raise ConfigError(f"task {name!r} takes no options ({', '.join(sorted(given))} are for --task custom)")
    return _BUILTIN[name]()
