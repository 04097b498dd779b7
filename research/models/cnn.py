"""The baseline CNN of the transfer-learning tutorial: conv stages, pooling, dropout, softmax head.

With the defaults it is the tutorial's model: two stages of two 3x3 convolutions (32 then 64
filters), each stage followed by 2x2 max pooling and dropout, then a dense layer, dropout and
the classification head. Parameters live at `stage{s}/block{b}/conv`, `fc` and `head`; every
kernel uses the `kernel_init` scheme (flax's LeCun normal by default) and biases start at zero.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models.conv import check_impl
from research.models.layers import ConvBlock, dense


class Stage(nn.Module):
    """`blocks` conv blocks at one width, then 2x2 max pooling."""

    features: int
    blocks: int
    batch_norm: bool = False
    bn_axis_name: str | None = None
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    conv: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        for b in range(1, self.blocks + 1):
            x = ConvBlock(
                self.features,
                batch_norm=self.batch_norm,
                bn_axis_name=self.bn_axis_name,
                kernel_init=self.kernel_init,
                init_scale=self.init_scale,
                conv=self.conv,
                dtype=self.dtype,
                name=f"block{b}",
            )(x, train=train)
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class CNN(nn.Module):
    """Baseline convolutional classifier; `__call__` returns (logits, aux)."""

    num_classes: int
    stage_features: Sequence[int] = (32, 64)
    blocks_per_stage: int = 2
    dense_features: int = 256
    dropout_rate: float = 0.25
    head_dropout_rate: float = 0.5
    batch_norm: bool = False
    bn_axis_name: str | None = None
    kernel_init: str = "lecun"  # every conv and dense kernel; see layers.KERNEL_INITS
    init_scale: float = 0.01  # stddev of kernel_init="normal"
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_impl(self.conv)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale}
        x = x.astype(self.dtype)
        aux = {}
        for s, features in enumerate(self.stage_features, start=1):
            x = Stage(
                features,
                self.blocks_per_stage,
                batch_norm=self.batch_norm,
                bn_axis_name=self.bn_axis_name,
                conv=self.conv,
                dtype=self.dtype,
                name=f"stage{s}",
                **init,
            )(x, train=train)
            aux[f"stage{s}"] = x
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense(self.dense_features, name="fc", dtype=self.dtype, **init)(x))
        aux["pre_logits"] = x
        x = nn.Dropout(self.head_dropout_rate, deterministic=not train)(x)
        logits = dense(self.num_classes, name="head", dtype=self.dtype, **init)(x)
        return logits.astype(jnp.float32), aux
