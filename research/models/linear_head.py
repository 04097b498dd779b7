"""The linear probe on cached features: a Dense named `head`, like a classifier's head.

Flax derives a submodule's initial values from its path, so this `head` starts exactly where
the full model's `head` would (same kernel initialiser, same input width).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models.layers import dense


class LinearHead(nn.Module):
    """logits = Dense(`num_classes`, name="head")(features); aux {"pre_logits": features}."""

    num_classes: int
    kernel_init: str = "lecun"
    dtype: Any = jnp.float32

    @classmethod
    def like(cls, model: nn.Module, num_classes: int) -> LinearHead:
        """The head of `model` alone: initialised with the model's `kernel_init` field where it
        declares one (CNN, MLP and recurrent nets build their head with it), else with lecun
        (the ResNet, VGG and MobileNet heads)."""
        declared = "kernel_init" in type(model).__dataclass_fields__
        return cls(num_classes, kernel_init=model.kernel_init if declared else "lecun")

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        del train
        logits = dense(
            self.num_classes,
            name="head",
            kernel_init=self.kernel_init,
            init_scale=0.01,
            dtype=self.dtype,
        )(x.astype(self.dtype))
        return logits.astype(jnp.float32), {"pre_logits": x}
