"""Building blocks shared by the model families, with stable submodule names.

Also the config-name registries every family uses: kernel initialisers (`model.kernel_init`,
scaled by `model.init_scale` where the scheme has a free scale) and activations
(`model.activation`), so a study can switch them per model without touching code.

The backbone families (VGG, ResNet, MobileNetV2) share `conv`, `batch_norm`, `ConvBN` and the
torch-style `adaptive_avg_pool`, so their parameter layouts follow one convention that the
weight porters rely on.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.models.conv import conv_function

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

# He normal over fan_out (plain, not truncated), torchvision's initialiser for the backbones' convs.
CONV_KERNEL_INIT: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

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
    conv: str = "auto"
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
            conv_general_dilated=conv_function(self.conv),
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


def conv(
    features: int,
    kernel_size: int,
    *,
    name: str,
    dtype: Any,
    strides: int = 1,
    padding: int | str = 0,
    use_bias: bool = False,
    groups: int = 1,
    impl: str = "auto",
) -> nn.Conv:
    """A square nn.Conv with He fan_out kernels and zero bias; an int padding is symmetric;
    `impl` is the model's `conv` option (research/models/conv.py).

    Call it inside a parent's compact method so the layer is registered under `name` there.
    """
    pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=pad,
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_init=CONV_KERNEL_INIT,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        conv_general_dilated=conv_function(impl),
        name=name,
    )


def batch_norm(
    *, train: bool, epsilon: float, axis_name: str | None, dtype: Any, name: str
) -> nn.BatchNorm:
    """BatchNorm with momentum 0.9 (torch's 0.1), batch statistics only while training."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=epsilon,
        axis_name=axis_name,
        dtype=dtype,
        name=name,
    )


class ConvBN(nn.Module):
    """`conv` then (when `batch_norm`) `bn`, no activation: stems, VGG blocks, 1x1 tops."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: int | str = 0
    use_bias: bool = False
    batch_norm: bool = True
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    conv: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=self.use_bias,
            dtype=self.dtype,
            impl=self.conv,
            name="conv",
        )(x)
        if self.batch_norm:
            x = batch_norm(
                train=train,
                epsilon=self.bn_epsilon,
                axis_name=self.bn_axis_name,
                dtype=self.dtype,
                name="bn",
            )(x)
        return x


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Row i averages torch's bin i: [floor(i * n / m), ceil((i + 1) * n / m))."""
    matrix = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -(-(i + 1) * size_in // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """torch's AdaptiveAvgPool2d((size, size)) on NHWC: possibly overlapping bins, exact identity
    when the input already is size x size, and copies when it is smaller (1x1 -> size x size).

    A rectangular bin's mean is a row mean of column means, so two small averaging matrices do it;
    they run in float32 at full precision and the result is cast back to the input's dtype.
    """
    height, width = x.shape[1], x.shape[2]
    if (height, width) == (size, size):
        return x
    rows = jnp.asarray(_adaptive_pool_matrix(height, size))
    cols = jnp.asarray(_adaptive_pool_matrix(width, size))
    out = jnp.einsum(
        "ih,jw,nhwc->nijc", rows, cols, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    return out.astype(x.dtype)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the spatial axes of NHWC features, (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))
