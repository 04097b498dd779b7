"""Classification: softmax cross-entropy; accuracy, macro precision/recall/F1, confusion matrix."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import data
from research.analysis import plots


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Labels in `batch['label']` (int), images or features in `batch['image']`."""

    num_classes: int
    label_smoothing: float = 0.0

    def transform(self) -> Callable[[dict], dict]:
        """Images scaled to [0, 1] float32 and int32 labels."""
        return data.make_transform()

    def inputs(self, batch: dict[str, jax.Array]) -> jax.Array:
        """The model input."""
        return batch["image"]

    def _targets(self, labels: jax.Array) -> jax.Array:
        onehot = jax.nn.one_hot(labels, self.num_classes)
        return optax.smooth_labels(onehot, self.label_smoothing) if self.label_smoothing else onehot

    def loss(self, logits: jax.Array, aux: dict, batch: dict) -> tuple[jax.Array, dict]:
        """Mean cross-entropy against (optionally smoothed) one-hot labels, and accuracy."""
        losses = optax.softmax_cross_entropy(logits, self._targets(batch["label"]))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return jnp.mean(losses), {"loss": jnp.mean(losses), "accuracy": accuracy}

    def eval_sums(self, logits: jax.Array, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked loss sum, example count and the confusion matrix (rows: true, cols: predicted)."""
        mask = batch["mask"]
        labels = batch["label"]
        losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, self.num_classes))
        predicted = jnp.argmax(logits, -1)
        cells = labels * self.num_classes + predicted
        confusion = jnp.zeros(self.num_classes**2, jnp.float32).at[cells].add(mask)
        return {
            "loss": jnp.sum(losses * mask),
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
        return [plots.confusion_matrix(sums["confusion"], directory / f"{prefix}_confusion.png")]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (a class never predicted has precision 0, as sklearn)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)
