"""Tasks: what a run optimises. `get_task(config.task, info)` builds one by name."""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from research.tasks import classification, continual, forecasting, reconstruction, sequence
from research.tasks.base import Task
from research.tasks.classification import BinaryClassificationTask, ClassificationTask
from research.tasks.continual import PermutedClassificationTask
from research.tasks.forecasting import RegressionTask
from research.tasks.reconstruction import ReconstructionTask
from research.tasks.registry import TaskData, TaskEntry, build
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

# Every task module's entries, in the order `TASKS` lists them: a new task adds its module here.
_ENTRIES: Mapping[str, TaskEntry] = MappingProxyType(
    {
        **classification.ENTRIES,
        **continual.ENTRIES,
        **reconstruction.ENTRIES,
        **forecasting.ENTRIES,
        **sequence.ENTRIES,
    }
)
TASKS = tuple(_ENTRIES)


def get_task(
    task_config: Mapping[str, Any],
    *,
    num_classes: int | None,
    total_steps: int = 1,
    input_size: int = 0,
    vocab_size: int | None = None,
    output_shape: tuple[int, ...] | None = None,
    log_levels: bool = False,
) -> Task:
    """Instantiate the task named by `task.name` with what it needs to know of the data.

    The last three come from prepared data (research.data.prepared.PreparedData): the
    `vocab_size` of token data, and of forecast windows the targets' `output_shape` (horizon,
    columns) and whether they are `log_levels`.
    The model is then built with `task.model_outputs` outputs (1 for binary_classification).
    """
    info = TaskData(num_classes, input_size, total_steps, vocab_size, output_shape, log_levels)
    return build(_ENTRIES, task_config, info)
