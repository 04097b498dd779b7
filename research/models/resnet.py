"""ResNet in torchvision's layout (v1.5 by default; v1 and Keras' conv biases by option).

Parameters live at `stem/{conv,bn}`, `stage{s}/block{b}/{conv,bn}{k}` (k = 1..2 for basic blocks,
1..3 for bottlenecks), `stage{s}/block{b}/proj_{conv,bn}` where the shortcut changes shape, and
`head`. v1.5 strides the 3x3 conv of a bottleneck; `stride_in_1x1=True` strides its first 1x1
conv instead (v1, Keras' ResNet50), and `conv_bias=True` gives every conv a bias (Keras). Convs
start He normal (fan_out), the head LeCun normal (flax's default), biases zero, BN scales one.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.errors import ConfigError
from research.models.conv import check_impl
from research.models.layers import ConvBN, batch_norm, conv, dense, global_avg_pool

BLOCKS = ("basic", "bottleneck")


class ResNetBlock(nn.Module):
    """One residual block, basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 to 4 * width)."""

    width: int
    strides: int = 1
    bottleneck: bool = True
    stride_in_1x1: bool = False
    conv_bias: bool = False
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if self.bottleneck:
            first, middle = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
            layers = [(self.width, 1, first), (self.width, 3, middle), (4 * self.width, 1, 1)]
        else:
            layers = [(self.width, 3, self.strides), (self.width, 3, 1)]
        y = x
        for k, (features, kernel_size, strides) in enumerate(layers, start=1):
            if k > 1:
                y = nn.relu(y)
            y = self._conv_bn(y, features, kernel_size, strides, f"conv{k}", f"bn{k}", train)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != y.shape[-1]:
            shortcut = self._conv_bn(x, y.shape[-1], 1, self.strides, "proj_conv", "proj_bn", train)
        return nn.relu(y + shortcut)

    def _conv_bn(
        self,
        x: jnp.ndarray,
        features: int,
        kernel_size: int,
        strides: int,
        conv_name: str,
        bn_name: str,
        train: bool,
    ) -> jnp.ndarray:
        """Sibling conv and BatchNorm layers named as the porters expect; 3x3 pads 1, 1x1 pads 0."""
        x = conv(
            features,
            kernel_size,
            strides=strides,
            padding=kernel_size // 2,
            use_bias=self.conv_bias,
            dtype=self.dtype,
            impl=self.conv,
            name=conv_name,
        )(x)
        return batch_norm(
            train=train,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            name=bn_name,
        )(x)


class ResNetStage(nn.Module):
    """`blocks` residual blocks at one width; the first one strides by `strides`."""

    width: int
    blocks: int
    strides: int = 1
    bottleneck: bool = True
    stride_in_1x1: bool = False
    conv_bias: bool = False
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        for b in range(1, self.blocks + 1):
            x = ResNetBlock(
                self.width,
                strides=self.strides if b == 1 else 1,
                bottleneck=self.bottleneck,
                stride_in_1x1=self.stride_in_1x1,
                conv_bias=self.conv_bias,
                bn_epsilon=self.bn_epsilon,
                bn_axis_name=self.bn_axis_name,
                conv=self.conv,
                dtype=self.dtype,
                name=f"block{b}",
            )(x, train=train)
        return x


class ResNet(nn.Module):
    """ResNet classifier (resnet18..resnet152); `__call__` returns (logits, aux).

    aux: "stem" (after the 3x3 max pool), "stage1".."stage{n}", "pre_logits" (globally averaged
    features). The first block of every stage after the first strides by 2.
    """

    num_classes: int
    block: str = "bottleneck"
    stage_blocks: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_features: int = 64
    bn_epsilon: float = 1e-5
    conv_bias: bool = False
    stride_in_1x1: bool = False
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Reject inconsistent options when the model is built, not at its first call."""
        check_impl(self.conv)
        if self.block not in BLOCKS:
            raise ConfigError(f"unknown model.block '{self.block}'; known: {', '.join(BLOCKS)}")
        if len(self.stage_blocks) != len(self.widths):
            raise ConfigError(
                "model.stage_blocks and model.widths need one entry per stage, got "
                f"{len(self.stage_blocks)} and {len(self.widths)}"
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
        x = ConvBN(
            self.stem_features,
            7,
            strides=2,
            padding=3,
            use_bias=self.conv_bias,
            name="stem",
            **common,
        )(x.astype(self.dtype), train=train)
        # -inf padding, so the pool never picks a padded value (torch's MaxPool2d(3, 2, 1)).
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        aux = {"stem": x}
        for s, (blocks, width) in enumerate(zip(self.stage_blocks, self.widths, strict=True), 1):
            x = ResNetStage(
                width,
                blocks,
                strides=1 if s == 1 else 2,
                bottleneck=self.block == "bottleneck",
                stride_in_1x1=self.stride_in_1x1,
                conv_bias=self.conv_bias,
                name=f"stage{s}",
                **common,
            )(x, train=train)
            aux[f"stage{s}"] = x
        x = aux["pre_logits"] = global_avg_pool(x)
        head = dense(
            self.num_classes, name="head", kernel_init="lecun", init_scale=1.0, dtype=self.dtype
        )
        return head(x).astype(jnp.float32), aux
