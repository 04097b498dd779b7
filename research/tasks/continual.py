"""Continual learning: tasks trained one after the other in one run.

`PermutedClassificationTask` is the permuted-pixels benchmark: task k sees every input with a
fixed random permutation of its values (task 0 unpermuted). The run's steps are split into
`num_tasks` equal stages and stage k trains on task k; each example carries its task id in
`batch["task"]`, so training and evaluation of any task go through the same compiled steps.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.tasks.classification import ClassificationTask
from research.tasks.registry import TaskData, TaskEntry


@dataclasses.dataclass(frozen=True)
class PermutedClassificationTask(ClassificationTask):
    """Classification where task k permutes the input values with permutation k."""

    num_tasks: int = 2
    permutation_seed: int = 0
    input_size: int = 0  # values per example (e.g. 64 for 8x8x1 digits)
    steps_per_task: int = 1

    def permutations(self) -> np.ndarray:
        """(num_tasks, input_size) permutations; task 0 is the identity."""
        rng = np.random.default_rng(self.permutation_seed)
        perms = [np.arange(self.input_size)]
        perms += [rng.permutation(self.input_size) for _ in range(1, self.num_tasks)]
        return np.stack(perms).astype(np.int32)

    def stage(self, step: int) -> int:
        """The task trained at (0-based) train step `step`."""
        return min(int(step) // self.steps_per_task, self.num_tasks - 1)

    def boundaries(self) -> list[int]:
        """The steps after which a task's stage ends (the last one is the run's end)."""
        return [self.steps_per_task * (k + 1) for k in range(self.num_tasks)]

    def prepare(self, batch: dict, step: jax.Array, rng: jax.Array | None = None) -> dict:
        """Inside the train step: tag every example with the task of this step's stage."""
        del rng
        task = jnp.minimum(step // self.steps_per_task, self.num_tasks - 1).astype(jnp.int32)
        return {**batch, "task": jnp.full(batch["label"].shape, task, jnp.int32)}

    def with_task(self, batch: dict, task: int) -> dict:
        """On the host: tag every example of an eval batch with `task`."""
        return {**batch, "task": np.full(batch["label"].shape, task, np.int32)}

    def inputs(self, batch: dict) -> jax.Array:
        """The images with each example's task permutation applied to its flattened values."""
        images = batch["image"]
        if "task" not in batch:  # untagged (e.g. a shape probe): task 0, the identity
            return images
        flat = images.reshape(images.shape[0], -1)
        perm = jnp.asarray(self.permutations())[batch["task"]]
        return jnp.take_along_axis(flat, perm, axis=1).reshape(images.shape)

    def permute(self, images: np.ndarray, task: int) -> np.ndarray:
        """On the host: task `task`'s view of a batch of images."""
        flat = images.reshape(images.shape[0], -1)
        return flat[:, self.permutations()[task]].reshape(images.shape)


def _permuted_classification(options: dict[str, Any], info: TaskData) -> PermutedClassificationTask:
    num_tasks = options.get("num_tasks", 2)
    if num_tasks < 1 or info.total_steps % num_tasks:
        raise ConfigError(
            f"task.num_tasks={num_tasks} must divide total_steps={info.total_steps} (equal stages)"
        )
    return PermutedClassificationTask(
        num_classes=info.num_classes,
        input_size=info.input_size,
        steps_per_task=info.total_steps // num_tasks,
        **options,
    )


ENTRIES = {
    "permuted_classification": TaskEntry(
        _permuted_classification, options=PermutedClassificationTask
    ),
}
