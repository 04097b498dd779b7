"""Building blocks shared by the model families, with stable submodule names.

Also the config-name registries every family uses: kernel initialisers (`model.kernel_init`,
scaled by `model.init_scale` where the scheme has a free scale) and activations
(`model.activation`), so a study can switch them per model without touching code.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError

Initializer = Callable[..., jax.Array]

# name -> (init_scale -> initializer). Only "normal" has a free scale; the others derive their
# variance from the kernel's fans, which is the point of using them.
KERNEL_INITS: Mapping[str, Callable[[float], Initializer]] = MappingProxyType(
    {
        # Small random normal (the classic "random initialisation"): stddev = init_scale.
        "normal": lambda scale: nn.initializers.normal(stddev=scale),
        # Xavier/Glorot uniform, for tanh/sigmoid: bound sqrt(6 / (fan_in + fan_out)).
        "glorot": lambda scale: nn.initializers.glorot_uniform(),
        # He/Kaiming normal over fan_in, for ReLU: std sqrt(2 / fan_in) (truncated normal).
        "he": lambda scale: nn.initializers.he_normal(),
        # Orthonormal columns (rows when wider than tall): keeps norms, for recurrent kernels.
        "orthogonal": lambda scale: nn.initializers.orthogonal(),
        # LeCun normal, flax's Dense/Conv default: std sqrt(1 / fan_in) (truncated normal).
        "lecun": lambda scale: nn.initializers.lecun_normal(),
    }
)

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = MappingProxyType(
    {"relu": nn.relu, "tanh": nn.tanh, "sigmoid": nn.sigmoid, "gelu": nn.gelu}
)


def resolve_dtype(name: str | Any) -> Any:
    """Map a config string ('float32', 'bfloat16', ...) to a jnp dtype; dtypes pass through."""
    return jnp.dtype(name) if isinstance(name, str) else name


def get_kernel_init(name: str, init_scale: float = 0.01) -> Initializer:
    """The kernel initializer registered as `name` (see KERNEL_INITS); a ConfigError if unknown.

    `init_scale` is the stddev of "normal" and ignored by the fan-based schemes.
    """
    if name not in KERNEL_INITS:
        raise ConfigError(
            f"unknown model.kernel_init '{name}'; known: {', '.join(sorted(KERNEL_INITS))}"
        )
    if not init_scale > 0:  # also catches NaN
        raise ConfigError(f"model.init_scale must be positive, got {init_scale}")
    return KERNEL_INITS[name](init_scale)


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function registered as `name` (see ACTIVATIONS); a ConfigError if unknown."""
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"unknown model.activation '{name}'; known: {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name]


class ConvBlock(nn.Module):
    """conv -> (BatchNorm) -> ReLU; no conv bias before BatchNorm (it would cancel out)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    batch_norm: bool = False
    bn_axis_name: str | None = None
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = nn.Conv(
            self.features,
            self.kernel_size,
            padding="SAME",
            use_bias=not self.batch_norm,
            kernel_init=get_kernel_init(self.kernel_init, self.init_scale),
            bias_init=nn.initializers.zeros,
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


def dense(features: int, *, name: str, kernel_init: str, init_scale: float, dtype: Any) -> nn.Dense:
    """A Dense layer with the named kernel initializer and zero bias, as every family uses.

    Call it inside a parent's compact method so the layer is registered under `name` there.
    """
    return nn.Dense(
        features,
        kernel_init=get_kernel_init(kernel_init, init_scale),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )
