"""The task protocol: how the generic steps turn model outputs into a loss and metrics."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax


class Task:
    """A task maps (model outputs, batch) to a scalar loss and to summable eval statistics.

    Train metrics are batch means (averaged over devices by the step). Eval statistics are sums
    over the real (mask == 1) examples, so padded batches and any number of devices or hosts
    give the same totals; `finalize` turns the totals into metrics.

    Every task subclasses this class. The methods from `model_kwargs` on have defaults (no
    extra model arguments, any model accepted, evaluation by one model call); a task overrides
    the ones it needs. The others have no default.
    """

    @property
    def model_outputs(self) -> int:
        """Width of the model's output layer, passed to `get_model` as `num_classes`.

        Usually the dataset's class count; a binary task with one sigmoid output needs 1.
        """
        raise NotImplementedError

    def transform(self) -> Callable[[dict], dict]:
        """The per-record transform from a dataset record to what `inputs`/`loss` read."""
        raise NotImplementedError

    def prepare(self, batch: dict, step: jax.Array, rng: jax.Array | None = None) -> dict:
        """Inside the train step: add what the step implies (e.g. a task id, a corrupted input).

        `rng` is this step's (per-device) key for the task's own randomness.
        """
        raise NotImplementedError

    def inputs(self, batch: dict[str, jax.Array]) -> Any:
        """What the model is called on."""
        raise NotImplementedError

    def loss(self, outputs: Any, aux: dict, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(mean loss, metrics as batch means) for one training batch."""
        raise NotImplementedError

    def eval_sums(self, outputs: Any, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked per-batch sums that `finalize` turns into metrics."""
        raise NotImplementedError

    def finalize(self, sums: dict[str, Any]) -> dict[str, float]:
        """Scalar metrics (no split prefix) from totals over a whole split."""
        raise NotImplementedError

    def summary(self, sums: dict[str, Any]) -> dict[str, Any]:
        """Extra, non-scalar results for summary.json (no split prefix), e.g. a confusion matrix."""
        raise NotImplementedError

    def plots(self, sums: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
        """Figures of the final evaluation written into `directory`; returns their paths."""
        raise NotImplementedError

    def model_kwargs(self, batch: dict) -> dict[str, Any]:
        """Keyword arguments for the model besides its input (e.g. the `seq_lengths` of
        right-padded sequences), in training and evaluation."""
        del batch
        return {}

    def check_model(self, model: nn.Module) -> None:
        """Raise a ConfigError, before anything is written, for a model the task cannot train."""
        del model

    def eval_outputs(self, apply: Callable, batch: dict, rng: jax.Array) -> tuple[Any, dict]:
        """(outputs, aux) for evaluation: `apply` is `model.apply` with the evaluated variables
        bound, `rng` the run's fixed eval key (the model's "sample" stream)."""
        kwargs = self.model_kwargs(batch)
        return apply(self.inputs(batch), train=False, rngs={"sample": rng}, **kwargs)


class SequenceInputs(Task):
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
