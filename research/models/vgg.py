"""VGG in torchvision's layout: 3x3 conv stages with max pooling, then a fully connected classifier.

Parameters live at `stage{s}/block{b}/conv` (always with a bias, as in torchvision's vgg*_bn too)
and, with `batch_norm`, `stage{s}/block{b}/bn`; then `fc6`, `fc7`, `head` (classifier "fc") or
only `head` (classifier "gap"). Convs start He normal (fan_out), dense kernels LeCun normal (flax's
default), biases zero. Inputs must be large enough that no stage pools its features to nothing
(at least 32x32 for five stages).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.errors import ConfigError
from research.models.conv import check_impl
from research.models.layers import ConvBN, adaptive_avg_pool, dense, global_avg_pool

CLASSIFIERS = ("fc", "gap")


class VGGStage(nn.Module):
    """`blocks` conv(+BN)+ReLU blocks at one width, then 2x2 max pooling (VALID, floor)."""

    features: int
    blocks: int
    batch_norm: bool = False
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        for b in range(1, self.blocks + 1):
            x = ConvBN(
                self.features,
                3,
                padding=1,
                use_bias=True,
                batch_norm=self.batch_norm,
                bn_epsilon=self.bn_epsilon,
                bn_axis_name=self.bn_axis_name,
                conv=self.conv,
                dtype=self.dtype,
                name=f"block{b}",
            )(x, train=train)
            x = nn.relu(x)
        if min(x.shape[1:3]) < 2:
            # torch refuses this too; without the check the rest would run on empty features.
            raise ConfigError(
                f"input too small for VGG: stage '{self.name}' would pool "
                f"{x.shape[1]}x{x.shape[2]} features to nothing (model.stage_blocks)"
            )
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class VGG(nn.Module):
    """VGG classifier (vgg11..vgg19, with or without BatchNorm); `__call__` returns (logits, aux).

    aux: "stage1".."stage{n}" (each stage's pooled output) and "pre_logits" (fc7's ReLU output,
    or the globally averaged features with classifier "gap"). `adaptive_pool` is torch's
    AdaptiveAvgPool2d size before the flatten (7 in torchvision; None, as in Keras, skips it).
    """

    num_classes: int
    stage_blocks: Sequence[int] = (2, 2, 3, 3, 3)
    stage_features: Sequence[int] = (64, 128, 256, 512, 512)
    batch_norm: bool = False
    bn_epsilon: float = 1e-5
    classifier: str = "fc"
    fc_features: int = 4096
    adaptive_pool: int | None = 7
    dropout_rate: float = 0.5
    bn_axis_name: str | None = None
    conv: str = "auto"  # research/models/conv.py: auto | xla | im2col
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Reject inconsistent options when the model is built, not at its first call."""
        check_impl(self.conv)
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(
                f"unknown model.classifier '{self.classifier}'; known: {', '.join(CLASSIFIERS)}"
            )
        if len(self.stage_blocks) != len(self.stage_features):
            raise ConfigError(
                "model.stage_blocks and model.stage_features need one entry per stage, got "
                f"{len(self.stage_blocks)} and {len(self.stage_features)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        x = x.astype(self.dtype)
        aux = {}
        for s, (blocks, features) in enumerate(
            zip(self.stage_blocks, self.stage_features, strict=True), start=1
        ):
            x = VGGStage(
                features,
                blocks,
                batch_norm=self.batch_norm,
                bn_epsilon=self.bn_epsilon,
                bn_axis_name=self.bn_axis_name,
                conv=self.conv,
                dtype=self.dtype,
                name=f"stage{s}",
            )(x, train=train)
            aux[f"stage{s}"] = x
        if self.classifier == "gap":
            x = aux["pre_logits"] = global_avg_pool(x)
        else:
            x = aux["pre_logits"] = self._fc_classifier(x, train=train)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = self._dense(self.num_classes, "head")(x)
        return logits.astype(jnp.float32), aux

    def _fc_classifier(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """(adaptive pool), flatten in (H, W, C) order, fc6 ReLU dropout, fc7 ReLU."""
        if self.adaptive_pool is not None:
            x = adaptive_avg_pool(x, self.adaptive_pool)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(self._dense(self.fc_features, "fc6")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.relu(self._dense(self.fc_features, "fc7")(x))

    def _dense(self, features: int, name: str) -> nn.Dense:
        """A LeCun-normal Dense layer with zero bias at the compute dtype."""
        return dense(features, name=name, kernel_init="lecun", init_scale=1.0, dtype=self.dtype)
