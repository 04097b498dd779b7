"""Tasks: what a run optimises. `get_task(config.task, info)` builds one by name."""

from collections.abc import Mapping
from typing import Any

from research.errors import ConfigError
from research.tasks.base import Task
from research.tasks.classification import BinaryClassificationTask, ClassificationTask
from research.tasks.continual import PermutedClassificationTask
from research.tasks.reconstruction import ReconstructionTask

__all__ = [
    "BinaryClassificationTask",
    "ClassificationTask",
    "PermutedClassificationTask",
    "ReconstructionTask",
    "TASKS",
    "Task",
    "get_task",
]

TASKS = ("classification", "binary_classification", "permuted_classification", "reconstruction")


def get_task(
    task_config: Mapping[str, Any],
    *,
    num_classes: int | None,
    total_steps: int = 1,
    input_size: int = 0,
) -> Task:
    """Instantiate the task named by `task.name` with the dataset's facts it needs.

    The model is then built with `task.model_outputs` outputs (1 for binary_classification).
    """
    kwargs = dict(task_config)
    name = kwargs.pop("name")
    if name == "classification":
        if not num_classes:
            raise ConfigError("task 'classification' needs a dataset with a ClassLabel 'label'")
        return ClassificationTask(num_classes=num_classes, **kwargs)
    if name == "binary_classification":
        if num_classes != 2:
            raise ConfigError(
                f"task 'binary_classification' needs a dataset whose 'label' has 2 classes, "
                f"got {num_classes}; use task.name='classification'"
            )
        return BinaryClassificationTask(**kwargs)
    if name == "permuted_classification":
        num_tasks = kwargs.get("num_tasks", 2)
        if num_tasks < 1 or total_steps % num_tasks:
            raise ConfigError(
                f"task.num_tasks={num_tasks} must divide total_steps={total_steps} (equal stages)"
            )
        return PermutedClassificationTask(
            num_classes=num_classes,
            input_size=input_size,
            steps_per_task=total_steps // num_tasks,
            **kwargs,
        )
    if name == "reconstruction":
        return ReconstructionTask.from_config(kwargs, input_size=input_size)
    raise ConfigError(f"unknown task.name '{name}'; known: {', '.join(TASKS)}")
