"""Tasks: what a run optimises. `get_task(config.task, info)` builds one by name."""

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from research.errors import ConfigError
from research.tasks.base import Task
from research.tasks.classification import BinaryClassificationTask, ClassificationTask
from research.tasks.continual import PermutedClassificationTask
from research.tasks.forecasting import RegressionTask
from research.tasks.reconstruction import ReconstructionTask
from research.tasks.sequence import LanguageModelTask, SequenceClassificationTask

__all__ = [
    "BinaryClassificationTask",
    "ClassificationTask",
    "LanguageModelTask",
    "PermutedClassificationTask",
    "ReconstructionTask",
    "RegressionTask",
    "SequenceClassificationTask",
    "TASKS",
    "Task",
    "get_task",
]

TASKS = (
    "classification",
    "binary_classification",
    "permuted_classification",
    "reconstruction",
    "forecasting",
    "regression",
    "sequence_classification",
    "language_model",
)


def get_task(
    task_config: Mapping[str, Any],
    *,
    num_classes: int | None,
    total_steps: int = 1,
    input_size: int = 0,
    facts: Mapping[str, Any] | None = None,
) -> Task:
    """Instantiate the task named by `task.name` with the dataset's facts it needs.

    `facts` come from prepared sequence data (research.data.sequences): the targets'
    "output_shape" (horizon, columns) of a forecast and whether it is of "log_levels", the
    "vocab_size" of a tokenized text.
    The model is then built with `task.model_outputs` outputs (1 for binary_classification).
    """
    facts = facts or {}
    kwargs = dict(task_config)
    name = kwargs.pop("name")
    _check_options(name, kwargs)
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
    if name in ("forecasting", "regression"):
        return RegressionTask(
            output_shape=tuple(facts.get("output_shape", (1, 1))),
            log_levels=bool(facts.get("log_levels", False)),
            **kwargs,
        )
    if name == "sequence_classification":
        if not num_classes:
            raise ConfigError("task 'sequence_classification' needs a dataset with a 'label'")
        return SequenceClassificationTask(num_classes=num_classes, **kwargs)
    if name == "language_model":
        if not facts.get("vocab_size"):
            raise ConfigError(
                "task 'language_model' needs token data: set data.text.level (char | word) or "
                "use a dataset of token ids (e.g. copy_memory)"
            )
        return LanguageModelTask(vocab_size=int(facts["vocab_size"]), **kwargs)
    raise ConfigError(f"unknown task.name '{name}'; known: {', '.join(TASKS)}")


# The task classes whose config options are their dataclass fields (reconstruction checks its
# own, with aliases), and the fields that come from the data rather than from the config.
_OPTION_CLASSES = {
    "classification": ClassificationTask,
    "binary_classification": BinaryClassificationTask,
    "permuted_classification": PermutedClassificationTask,
    "forecasting": RegressionTask,
    "regression": RegressionTask,
    "sequence_classification": SequenceClassificationTask,
    "language_model": LanguageModelTask,
}
_FROM_DATA = ("num_classes", "input_size", "steps_per_task", "output_shape", "log_levels")


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    """An option the task does not have is a ConfigError naming it and the nearest one."""
    cls = _OPTION_CLASSES.get(name)
    if cls is None:
        return
    known = sorted({f.name for f in dataclasses.fields(cls)} - set(_FROM_DATA) - {"vocab_size"})
    unknown = sorted(set(options) - set(known))
    if unknown:
        near = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean task.{near[0]}?)" if near else ""
        raise ConfigError(
            f"task '{name}' has no option task.{unknown[0]}{hint}; its options: "
            + (", ".join(known) or "none")
        )
