"""Sequence classification and per-step token prediction (language models, copy memory).

`SequenceClassificationTask` is classification (cross-entropy; accuracy, macro F1, confusion
matrix) over a whole sequence: "inputs" are token ids or (time, features) values with an
optional real "length", or an image read as a sequence, pixel by pixel or row by row.

`LanguageModelTask` predicts a token at every step: the next character or word of a text
(targets are the inputs shifted by one) or any per-step target sequence (the copy-memory
problem). It reports the per-token cross-entropy `loss`, `perplexity` = exp(loss),
`bits_per_token` and per-token `accuracy`; padded steps (beyond "length") are left out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.transforms import to_float_image
from research.errors import ConfigError, DataError
from research.tasks.base import SequenceInputs
from research.tasks.classification import ClassificationTask
from research.tasks.registry import TaskData, TaskEntry

IMAGE_ORDERS = ("pixels", "rows")


@dataclasses.dataclass(frozen=True)
class SequenceClassificationTask(SequenceInputs, ClassificationTask):
    """Classification of whole sequences; the model gets `seq_lengths` when records have them."""

    image_order: str = "pixels"  # an image as a sequence: pixels (H*W steps) | rows (H steps)

    def __post_init__(self) -> None:
        if self.image_order not in IMAGE_ORDERS:
            raise ConfigError(
                f"unknown task.image_order '{self.image_order}'; known: {', '.join(IMAGE_ORDERS)}"
            )

    def transform(self) -> Callable[[dict], dict]:
        """Records -> {"inputs", "label"[, "length"]}; images become sequences."""
        return functools.partial(_sequence_record, image_order=self.image_order)


@dataclasses.dataclass(frozen=True)
class LanguageModelTask(SequenceInputs):
    """Cross-entropy of a `vocab_size`-way prediction at every step against `targets`."""

    vocab_size: int = 0  # from the data's vocabulary

    @property
    def model_outputs(self) -> int:
        """One logit per vocabulary entry, at every step."""
        return self.vocab_size

    def transform(self) -> Callable[[dict], dict]:
        """int32 inputs and targets (and length when present)."""
        return _token_record

    def _token_losses(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(per-step cross-entropy, weights: 1 on real steps)."""
        if logits.ndim != 3:
            raise DataError(
                f"a language model needs per-step outputs (batch, time, vocab), got {logits.shape};"
                " set model.pooling='none'"
            )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        weights = jnp.ones(losses.shape, jnp.float32)
        if "length" in batch:
            weights = (jnp.arange(losses.shape[1])[None] < batch["length"][:, None]).astype(
                jnp.float32
            )
        return losses, weights

    def loss(self, logits: jax.Array, aux: dict, batch: dict) -> tuple[jax.Array, dict]:
        """Mean cross-entropy per real token and the token accuracy."""
        losses, weights = self._token_losses(logits, batch)
        total = jnp.maximum(jnp.sum(weights), 1.0)
        loss = jnp.sum(losses * weights) / total
        correct = jnp.argmax(logits, -1) == batch["targets"]
        accuracy = jnp.sum(correct * weights) / total
        # No training perplexity: under pmap it would be a mean of per-device exp(loss), not
        # exp of the mean; eval reports it exactly from sums, and exp(train/loss) is one step.
        return loss, {"loss": loss, "accuracy": accuracy}

    def eval_sums(self, logits: jax.Array, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked sums of cross-entropy and correct predictions, and the token count."""
        losses, weights = self._token_losses(logits, batch)
        weights = weights * batch["mask"][:, None]
        correct = jnp.argmax(logits, -1) == batch["targets"]
        return {
            "loss": jnp.sum(losses * weights),
            "correct": jnp.sum(correct * weights),
            "tokens": jnp.sum(weights),
        }

    def finalize(self, sums: dict[str, Any]) -> dict[str, float]:
        """Per-token loss (nats), perplexity, bits per token and accuracy."""
        tokens = float(sums["tokens"])
        loss = float(sums["loss"]) / tokens
        return {
            "loss": loss,
            "perplexity": float(np.exp(loss)),
            "bits_per_token": loss / float(np.log(2.0)),
            "accuracy": float(sums["correct"]) / tokens,
        }

    def summary(self, sums: dict[str, Any]) -> dict[str, Any]:
        """Nothing beyond the scalar metrics."""
        del sums
        return {}

    def plots(self, sums: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
        """No figures."""
        del sums, directory, prefix
        return []


def _sequence_record(record: dict, *, image_order: str) -> dict:
    """A stored record as a sequence example; images are read pixel by pixel or row by row."""
    if "image" in record:
        image = to_float_image(record["image"])
        height, width, channels = image.shape
        steps = image.reshape(height * width, channels)
        if image_order == "rows":
            steps = image.reshape(height, width * channels)
        return {"inputs": steps, "label": np.int32(record["label"])}
    out = {"inputs": np.asarray(record["inputs"]), "label": np.int32(record["label"])}
    if np.issubdtype(out["inputs"].dtype, np.floating):
        out["inputs"] = out["inputs"].astype(np.float32)
    if "length" in record:
        out["length"] = np.int32(record["length"])
    return out


def _token_record(record: dict) -> dict:
    """int32 token ids; the length of a padded record when present."""
    out = {
        "inputs": np.asarray(record["inputs"], np.int32),
        "targets": np.asarray(record["targets"], np.int32),
    }
    for key in ("length", "reset"):
        if key in record:
            out[key] = np.asarray(record[key], np.int32 if key == "length" else np.float32)
    return out


def _sequence_classification(options: dict[str, Any], info: TaskData) -> SequenceClassificationTask:
    if not info.num_classes:
        raise ConfigError("task 'sequence_classification' needs a dataset with a 'label'")
    return SequenceClassificationTask(num_classes=info.num_classes, **options)


def _language_model(options: dict[str, Any], info: TaskData) -> LanguageModelTask:
    if not info.vocab_size:
        raise ConfigError(
            "task 'language_model' needs token data: set info.text.level (char | word) or "
            "use a dataset of token ids (e.g. copy_memory)"
        )
    return LanguageModelTask(vocab_size=int(info.vocab_size), **options)


ENTRIES = {
    "sequence_classification": TaskEntry(
        _sequence_classification, options=SequenceClassificationTask
    ),
    "language_model": TaskEntry(_language_model, options=LanguageModelTask),
}
