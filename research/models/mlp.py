"""Multi-layer perceptron: `layer{i}` hidden Dense layers and a `head`."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Flattens its input, applies ReLU hidden layers with dropout, and a linear head."""

    num_classes: int
    hidden_sizes: Sequence[int] = (256, 128)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        aux = {}
        for i, width in enumerate(self.hidden_sizes, start=1):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"layer{i}")(x))
            aux[f"layer{i}"] = x
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        aux["pre_logits"] = x
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32), aux
