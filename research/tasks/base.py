"""The task protocol: how the generic steps turn model outputs into a loss and metrics."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax


class Task(Protocol):
    """A task maps (model outputs, batch) to a scalar loss and to summable eval statistics.

    Train metrics are batch means (averaged over devices by the step). Eval statistics are sums
    over the real (mask == 1) examples, so padded batches and any number of devices or hosts
    give the same totals; `finalize` turns the totals into metrics.

    Optional methods the steps and setup use when a task defines them:
    `eval_outputs(apply, batch, rng) -> (outputs, aux)` runs the model for evaluation itself
    (`apply` is `model.apply` with the variables bound; `rng` is the run's fixed eval key), and
    `check_model(model)` raises a ConfigError, before anything is written, for a model the task
    cannot train, and `model_kwargs(batch) -> dict` gives keyword arguments for the model besides
    its input (e.g. the `seq_lengths` of right-padded sequences), in training and evaluation.
    """

    @property
    def model_outputs(self) -> int:
        """Width of the model's output layer, passed to `get_model` as `num_classes`.

        Usually the dataset's class count; a binary task with one sigmoid output needs 1.
        """

    def transform(self) -> Callable[[dict], dict]:
        """The per-record transform from a dataset record to what `inputs`/`loss` read."""

    def prepare(self, batch: dict, step: jax.Array, rng: jax.Array | None = None) -> dict:
        """Inside the train step: add what the step implies (e.g. a task id, a corrupted input).

        `rng` is this step's (per-device) key for the task's own randomness.
        """

    def inputs(self, batch: dict[str, jax.Array]) -> Any:
        """What the model is called on."""

    def loss(self, outputs: Any, aux: dict, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(mean loss, metrics as batch means) for one training batch."""

    def eval_sums(self, outputs: Any, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked per-batch sums that `finalize` turns into metrics."""

    def finalize(self, sums: dict[str, Any]) -> dict[str, float]:
        """Scalar metrics (no split prefix) from totals over a whole split."""

    def summary(self, sums: dict[str, Any]) -> dict[str, Any]:
        """Extra, non-scalar results for summary.json (no split prefix), e.g. a confusion matrix."""

    def plots(self, sums: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
        """Figures of the final evaluation written into `directory`; returns their paths."""


class SequenceInputs:
    """Shared by the sequence tasks: the model reads `batch["inputs"]`, gets the real lengths of
    right-padded sequences as `seq_lengths`, and the train step adds nothing to the batch."""

    def prepare(self, batch: dict, step: jax.Array, rng: jax.Array | None = None) -> dict:
        """Nothing to add inside the train step."""
        del step, rng
        return batch

    def inputs(self, batch: dict) -> jax.Array:
        """The sequence (values or token ids)."""
        return batch["inputs"]

    def model_kwargs(self, batch: dict) -> dict:
        """Real lengths of right-padded sequences, when the data has them."""
        return {"seq_lengths": batch["length"]} if "length" in batch else {}
