"""Tasks: what a run optimises. `get_task(config.task, info)` builds one by name."""

from collections.abc import Mapping
from typing import Any

from research.errors import ConfigError
from research.tasks.base import Task
from research.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask", "Task", "get_task"]


def get_task(task_config: Mapping[str, Any], *, num_classes: int | None) -> Task:
    """Instantiate the task named by `task.name` with the dataset's facts it needs."""
    kwargs = dict(task_config)
    name = kwargs.pop("name")
    if name == "classification":
        if not num_classes:
            raise ConfigError("task 'classification' needs a dataset with a ClassLabel 'label'")
        return ClassificationTask(num_classes=num_classes, **kwargs)
    raise ConfigError(f"unknown task.name '{name}'; known: classification")
