"""Tasks: loaders, prompt templates, verbalizers and metrics, behind a registry."""

from flare_cli.tasks.base import Task
from flare_cli.tasks.registry import TASK_NAMES, get_task

__all__ = ["TASK_NAMES", "Task", "get_task"]
