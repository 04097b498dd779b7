"""What a benchmarked train step computes, in terms another framework can rebuild.

A `Spec` names the model family, its options as the project's config gives them, one example's
input shape, the loss and the learning rate; `research/bench/torch_steps.py` and
`research/bench/keras_steps.py` build the same network (same layers, same parameter count) and
the same Adam step from it. A `Batch` is the numpy batch every framework trains on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

Kind = Literal["mlp", "cnn", "lstm", "resnet", "vae"]
Loss = Literal["cross_entropy", "mse", "vae_bce"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """One workload's network and objective, framework-neutral.

    kind: the project's model family; `options` are its config's model keys (e.g. mlp:
    hidden_sizes, dropout_rate; cnn: stage_features, blocks_per_stage, dense_features,
    dropout_rate, head_dropout_rate, batch_norm; lstm: hidden_sizes, pooling; resnet: name
    "resnet18" | "resnet50"; vae: hidden_sizes, latent_size). `input_shape` is one example's,
    channels last for images ((H, W, C)) and (T, features) for sequences. `num_outputs`:
    classes (cross_entropy), targets (mse) or ignored (vae_bce, which reconstructs its input:
    Bernoulli negative log-likelihood summed over pixels plus the KL to N(0, I), averaged over
    the batch). Every step is plain Adam at `learning_rate` on the batch mean loss.
    """

    kind: Kind
    options: Mapping[str, Any]
    input_shape: tuple[int, ...]
    num_outputs: int
    loss: Loss
    learning_rate: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Batch:
    """`x` float32 (B, *input_shape); `y` int32 (B,) labels, float32 (B, num_outputs) targets,
    or None for vae_bce (the target is `x`)."""

    x: np.ndarray
    y: np.ndarray | None


@dataclasses.dataclass
class Step:
    """One framework's compiled or eager train step on a fixed batch.

    `run()` performs one full step (forward, loss, backward, Adam update) and returns only when
    its results are computed (a device sync), so wall time around it is the step's time.
    `num_params` counts trainable parameters; `first_step_s` is the wall time of the first call
    (tracing, compilation, allocation); `peak_bytes` the device memory the step needs where the
    framework can say (else None).
    """

    run: Callable[[], None]
    num_params: int
    first_step_s: float
    peak_bytes: int | None = None
    flops: float | None = None  # per step, where known (the project's: research/flops.py)
