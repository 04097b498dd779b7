"""Tasks by name: each task module lists how to build its tasks from `config.task` and the
data (`ENTRIES`), and `research/tasks/__init__.py` joins the lists, so adding a task is one new
module plus one line there.

    def _classification(options: dict, data: TaskData) -> ClassificationTask:
        return ClassificationTask(num_classes=data.num_classes, **options)

    ENTRIES = {"classification": TaskEntry(_classification, options=ClassificationTask)}

`options` are `config.task` without its name; with `options=<dataclass>`, an option the class does
not have (other than those that come from the data) is refused before the builder runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from research.errors import ConfigError

# Task fields that come from the data or the run length, never from `config.task`.
FROM_DATA = (
    "num_classes",
    "input_size",
    "steps_per_task",
    "vocab_size",
    "output_shape",
    "log_levels",
)


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What a task may need to know about the data and the run to be built."""

    num_classes: int | None = None
    input_size: int = 0
    total_steps: int = 1
    vocab_size: int | None = None  # token data: the vocabulary's size
    output_shape: tuple[int, ...] | None = None  # forecast windows: (horizon, target columns)
    log_levels: bool = False  # forecast windows are cut from log(values)


Builder = Callable[[dict[str, Any], TaskData], Any]


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """How to build one task: `build(options, data)`; `options` is the dataclass whose fields are
    the task's config options (None: the builder checks its own)."""

    build: Builder
    options: type | None = None


def build(entries: Mapping[str, TaskEntry], task_config: Mapping[str, Any], data: TaskData) -> Any:
    """The task named by `task_config['name']` in `entries`, built from its options and data."""
    options = dict(task_config)
    name = options.pop("name")
    entry = entries.get(name)
    if entry is None:
        raise ConfigError(f"unknown task.name '{name}'; known: {', '.join(entries)}")
    if entry.options is not None:
        _check_options(name, entry.options, options)
    return entry.build(options, data)


def _check_options(name: str, cls: type, options: Mapping[str, Any]) -> None:
    """An option the task does not have is a ConfigError naming it and the nearest one."""
    known = sorted({f.name for f in dataclasses.fields(cls)} - set(FROM_DATA))
    unknown = sorted(set(options) - set(known))
    if unknown:
        near = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean task.{near[0]}?)" if near else ""
        raise ConfigError(
            f"task '{name}' has no option task.{unknown[0]}{hint}; its options: "
            + (", ".join(known) or "none")
        )
