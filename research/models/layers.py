"""Building blocks shared by the model families, with stable submodule names."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def resolve_dtype(name: str | Any) -> Any:
    """Map a config string ('float32', 'bfloat16', ...) to a jnp dtype; dtypes pass through."""
    return jnp.dtype(name) if isinstance(name, str) else name


class ConvBlock(nn.Module):
    """conv -> (BatchNorm) -> ReLU; no conv bias before BatchNorm (it would cancel out)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    batch_norm: bool = False
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = nn.Conv(
            self.features,
            self.kernel_size,
            padding="SAME",
            use_bias=not self.batch_norm,
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.batch_norm:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                axis_name=self.bn_axis_name,
                dtype=self.dtype,
                name="bn",
            )(x)
        return nn.relu(x)
