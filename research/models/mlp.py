"""Multi-layer perceptron: `layer{i}` hidden Dense layers and a `head`."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models.layers import dense, get_activation


class MLP(nn.Module):
    """Flattens its input, applies hidden layers with dropout, and a linear head.

    The head emits `num_classes` logits; with `num_classes=1` it is a single logit for a
    sigmoid (binary) output. `activation` names the hidden non-linearity and `kernel_init` (with
    `init_scale`) the initializer of every kernel; biases start at zero.
    """

    num_classes: int
    hidden_sizes: Sequence[int] = (256, 128)
    dropout_rate: float = 0.0
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        act = get_activation(self.activation)
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale, "dtype": self.dtype}
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        aux = {}
        for i, width in enumerate(self.hidden_sizes, start=1):
            x = act(dense(width, name=f"layer{i}", **init)(x))
            aux[f"layer{i}"] = x
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        aux["pre_logits"] = x
        logits = dense(self.num_classes, name="head", **init)(x)
        return logits.astype(jnp.float32), aux
