"""Classification: softmax cross-entropy; accuracy, macro precision/recall/F1, confusion matrix.

`BinaryClassificationTask` is the two-class case with ONE output unit: a sigmoid on a single
logit trained with binary cross-entropy, predicting class 1 when the probability exceeds 0.5.
It shares the evaluation (2x2 confusion matrix and the metrics derived from it).
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import data
from research.errors import ConfigError
from research.reporting.confusion import confusion_matrix
from research.tasks.base import Task
from research.tasks.registry import TaskData, TaskEntry


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
    """Labels in `batch['label']` (int), images or features in `batch['image']`."""

    num_classes: int
    label_smoothing: float = 0.0

    @property
    def model_outputs(self) -> int:
        """Width of the model's output layer: one logit per class."""
        return self.num_classes

    def transform(self) -> Callable[[dict], dict]:
        """Images scaled to [0, 1] float32 and int32 labels."""
        return data.make_transform()

    def prepare(self, batch: dict, step: jax.Array, rng: jax.Array | None = None) -> dict:
        """Inside the train step, before anything else: nothing to add for plain classification."""
        del step, rng
        return batch

    def inputs(self, batch: dict[str, jax.Array]) -> jax.Array:
        """The model input."""
        return batch["image"]

    def losses(self, logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
        """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
        onehot = jax.nn.one_hot(labels, self.num_classes)
        targets = optax.smooth_labels(onehot, smoothing) if smoothing else onehot
        return optax.softmax_cross_entropy(logits, targets)

    def predict(self, logits: jax.Array) -> jax.Array:
        """Predicted class per example: the largest logit."""
        return jnp.argmax(logits, -1)

    def loss(self, logits: jax.Array, aux: dict, batch: dict) -> tuple[jax.Array, dict]:
        """Mean training loss (with the configured label smoothing), and accuracy.

        Soft `targets` in the batch (mixup/CutMix, smoothing already applied) replace the
        labels in the loss; accuracy is always against the original labels.
        """
        if "targets" in batch:
            loss = jnp.mean(optax.softmax_cross_entropy(logits, batch["targets"]))
        else:
            loss = jnp.mean(self.losses(logits, batch["label"], self.label_smoothing))
        accuracy = jnp.mean(self.predict(logits) == batch["label"])
        return loss, {"loss": loss, "accuracy": accuracy}

    def eval_sums(self, logits: jax.Array, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked loss sum, example count and the confusion matrix (rows: true, cols: predicted).

        The eval loss never smooths labels, so it is comparable across label_smoothing values.
        """
        mask = batch["mask"]
        labels = batch["label"]
        cells = labels * self.num_classes + self.predict(logits)
        confusion = jnp.zeros(self.num_classes**2, jnp.float32).at[cells].add(mask)
        return {
            "loss": jnp.sum(self.losses(logits, labels) * mask),
            "count": jnp.sum(mask),
            "confusion": confusion.reshape(self.num_classes, self.num_classes),
        }

    def finalize(self, sums: dict[str, Any]) -> dict[str, float]:
        """Loss, accuracy and macro-averaged precision/recall/F1 from the summed statistics."""
        confusion = np.asarray(sums["confusion"], np.float64)
        count = float(sums["count"])
        true_pos = np.diag(confusion)
        predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
        precision = _safe_ratio(true_pos, predicted)
        recall = _safe_ratio(true_pos, actual)
        f1 = _safe_ratio(2 * precision * recall, precision + recall)
        # Macro averages over the classes that occur in the labels or the predictions, as
        # sklearn does: a class absent from a split must not drag the average down.
        seen = (predicted + actual) > 0
        return {
            "loss": float(sums["loss"]) / count,
            "accuracy": float(true_pos.sum()) / count,
            "precision": float(precision[seen].mean()),
            "recall": float(recall[seen].mean()),
            "f1": float(f1[seen].mean()),
        }

    def summary(self, sums: dict[str, Any]) -> dict[str, Any]:
        """The confusion matrix (rows: true class, columns: predicted) as integer lists."""
        return {"confusion_matrix": np.asarray(sums["confusion"]).astype(int).tolist()}

    def plots(self, sums: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
        """A heatmap of the confusion matrix."""
        return [confusion_matrix(sums["confusion"], directory / f"{prefix}_confusion.png")]


@dataclasses.dataclass(frozen=True)
class BinaryClassificationTask(ClassificationTask):
    """Two classes from one logit z per example: p(class 1) = sigmoid(z), loss = binary CE.

    The model must be built with `model_outputs` (= 1) outputs. Label smoothing moves the 0/1
    targets towards 1/2 by `label_smoothing / 2`, the same targets a two-class softmax gets.
    """

    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.num_classes != 2:
            raise ValueError(f"binary classification has 2 classes, got {self.num_classes}")

    @property
    def model_outputs(self) -> int:
        """Width of the model's output layer: a single logit."""
        return 1

    def losses(self, logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
        """Per-example sigmoid binary cross-entropy of the single logit."""
        targets = labels.astype(jnp.float32)
        if smoothing:
            targets = targets * (1 - smoothing) + smoothing / 2
        return optax.sigmoid_binary_cross_entropy(_single_logit(logits), targets)

    def predict(self, logits: jax.Array) -> jax.Array:
        """Class 1 where sigmoid(z) > 0.5, i.e. z > 0; class 0 otherwise (ties included)."""
        return (_single_logit(logits) > 0).astype(jnp.int32)


def _single_logit(logits: jax.Array) -> jax.Array:
    """(batch, 1) logits -> (batch,); a wider head is a wiring error (setup must pass 1 output)."""
    if logits.shape[-1] != 1:
        raise ValueError(
            f"binary classification needs a model with 1 output, got logits of shape "
            f"{logits.shape}; build the model with num_classes=task.model_outputs"
        )
    return logits[..., 0]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (a class never predicted has precision 0, as sklearn)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _classification(options: dict[str, Any], info: TaskData) -> ClassificationTask:
    if not info.num_classes:
        raise ConfigError("task 'classification' needs a dataset with a ClassLabel 'label'")
    return ClassificationTask(num_classes=info.num_classes, **options)


def _binary_classification(options: dict[str, Any], info: TaskData) -> BinaryClassificationTask:
    if info.num_classes != 2:
        raise ConfigError(
            f"task 'binary_classification' needs a dataset whose 'label' has 2 classes, "
            f"got {info.num_classes}; use task.name='classification'"
        )
    return BinaryClassificationTask(**options)


ENTRIES = {
    "classification": TaskEntry(_classification, options=ClassificationTask),
    "binary_classification": TaskEntry(_binary_classification, options=BinaryClassificationTask),
}
