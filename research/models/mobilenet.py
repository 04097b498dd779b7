"""MobileNetV2 in Keras' layout: inverted residual blocks with linear bottlenecks, ReLU6, no biases.

Parameters live at `stem/{conv,bn}`, `stage{s}/block{b}/{expand,depthwise,project}_{conv,bn}`
(no expand layers when the expansion is 1), `top/{conv,bn}` and `head`. Every conv pads like
TensorFlow's "SAME", which equals Keras' explicit `correct_pad` before its stride-2 depthwise
convs. Channel counts follow Keras: `make_divisible(int(c * alpha), 8)` per block,
`make_divisible(32 * alpha, 8)` for the stem, `last_features` scaled only when alpha > 1. Convs
start He normal (fan_out), the head LeCun normal (flax's default), biases zero.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.errors import ConfigError
from research.models.conv import check_impl
from research.models.layers import ConvBN, batch_norm, conv, dense, global_avg_pool

# (expansion t, channels c, blocks n, first stride s) per stage: the paper's Table 2.
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to the nearest multiple of `divisor` (at least `divisor`), never losing more
    than 10% of it: the channel rounding of the MobileNet papers and Keras."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expand + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 project; residual when shapes match."""

    features: int
    expansion: int
    strides: int = 1
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col (depthwise: always xla)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        in_features = x.shape[-1]
        y = x
        if self.expansion != 1:
            y = nn.relu6(self._conv_bn(y, self.expansion * in_features, 1, 1, "expand", train))
        hidden = y.shape[-1]
        y = nn.relu6(self._conv_bn(y, hidden, 3, self.strides, "depthwise", train, groups=hidden))
        y = self._conv_bn(y, self.features, 1, 1, "project", train)
        if self.strides == 1 and in_features == self.features:
            y = x + y
        return y

    def _conv_bn(
        self,
        x: jnp.ndarray,
        features: int,
        kernel_size: int,
        strides: int,
        prefix: str,
        train: bool,
        groups: int = 1,
    ) -> jnp.ndarray:
        """`{prefix}_conv` (SAME, no bias) and `{prefix}_bn` as sibling layers of the block."""
        x = conv(
            features,
            kernel_size,
            strides=strides,
            padding="SAME",
            groups=groups,
            dtype=self.dtype,
            impl=self.conv,
            name=f"{prefix}_conv",
        )(x)
        return batch_norm(
            train=train,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            name=f"{prefix}_bn",
        )(x)


class MobileNetV2Stage(nn.Module):
    """`blocks` inverted residual blocks of one setting; the first one strides by `strides`."""

    features: int
    expansion: int
    blocks: int
    strides: int = 1
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col (depthwise: always xla)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        for b in range(1, self.blocks + 1):
            x = InvertedResidual(
                self.features,
                self.expansion,
                strides=self.strides if b == 1 else 1,
                bn_epsilon=self.bn_epsilon,
                bn_axis_name=self.bn_axis_name,
                conv=self.conv,
                dtype=self.dtype,
                name=f"block{b}",
            )(x, train=train)
        return x


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier; `__call__` returns (logits, aux).

    aux: "stem", "stage1".."stage{n}" (one per entry of `settings`), "pre_logits" (globally
    averaged output of the 1x1 `top` conv). Dropout (off by default, as in Keras) precedes the head.
    """

    num_classes: int
    alpha: float = 1.0
    settings: Sequence[Sequence[int]] = SETTINGS
    last_features: int = 1280
    bn_epsilon: float = 1e-3
    dropout_rate: float = 0.0
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col (depthwise: always xla)
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Reject malformed options when the model is built, not at its first call."""
        check_impl(self.conv)
        if not self.alpha > 0:
            raise ConfigError(f"model.alpha must be positive, got {self.alpha}")
        if any(len(setting) != 4 for setting in self.settings):
            raise ConfigError(
                f"model.settings needs (expansion, channels, blocks, stride) rows, got "
                f"{self.settings}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        common = {
            "bn_epsilon": self.bn_epsilon,
            "bn_axis_name": self.bn_axis_name,
            "conv": self.conv,
            "dtype": self.dtype,
        }
        stem = ConvBN(
            make_divisible(32 * self.alpha), 3, strides=2, padding="SAME", name="stem", **common
        )
        x = nn.relu6(stem(x.astype(self.dtype), train=train))
        aux = {"stem": x}
        for s, (expansion, channels, blocks, strides) in enumerate(self.settings, start=1):
            x = MobileNetV2Stage(
                make_divisible(int(channels * self.alpha)),
                expansion,
                blocks,
                strides=strides,
                name=f"stage{s}",
                **common,
            )(x, train=train)
            aux[f"stage{s}"] = x
        last = self.last_features
        if self.alpha > 1:  # Keras widens the top only, never narrows it
            last = make_divisible(last * self.alpha)
        top = ConvBN(last, 1, padding="SAME", name="top", **common)
        x = aux["pre_logits"] = global_avg_pool(nn.relu6(top(x, train=train)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        head = dense(
            self.num_classes, name="head", kernel_init="lecun", init_scale=1.0, dtype=self.dtype
        )
        return head(x).astype(jnp.float32), aux
