"""keras.applications weights (VGG16, VGG19, ResNet50, MobileNetV2) -> our Flax variables.

Weight files (legacy HDF5, Keras 3 `.weights.h5`, `.keras` archives) are read by
research/port/keras_files.py with h5py alone: no keras import, nothing unpickled. This module
maps Keras layer names onto our parameter paths and builds the matching model.

The model is built with the options that reproduce Keras: VGG without adaptive pooling (Keras
flattens whatever the input gives, so the input size follows from fc1's rows), ResNet50 v1 with
conv biases and BatchNorm epsilon 1.001e-5, MobileNetV2 with epsilon 1e-3 and the width
multiplier read off the file. A `_notop` file has no classifier: VGG then gets classifier "gap",
and every model keeps a freshly initialised head (seed 0, 1000 classes like keras.applications)
- the only parameters not ported, with a warning in the log. Keras' caffe-mode models expect
BGR input: use `preprocess(arch)`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError, WeightsError
from research.models.mobilenet import make_divisible
from research.port.common import fill, require_file
from research.port.keras_files import LayerWeights, read_layers

log = logging.getLogger(__name__)

ARCHS = ("vgg16", "vgg19", "resnet50", "mobilenet_v2")
HOW_TO_GET = (
    "download it once where there is network, e.g. keras.applications.<Model>(weights='imagenet') "
    "caches it under ~/.keras/models/, and copy the file here"
)
NOTOP_CLASSES = 1000  # keras.applications' default `classes`, for the fresh head of a _notop file
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# Keras MobileNetV2 block ids 0..16 run through seven stages of these many blocks.
MOBILENET_STAGE_BLOCKS = (1, 2, 3, 4, 3, 3, 1)

# (weight name in a Keras layer, our collection, our leaf name), in Keras' order per layer kind.
_ROLES = {
    "conv": (("kernel", "params", "kernel"), ("bias", "params", "bias")),
    "bn": (
        ("gamma", "params", "scale"),
        ("beta", "params", "bias"),
        ("moving_mean", "batch_stats", "mean"),
        ("moving_variance", "batch_stats", "var"),
    ),
}


def load(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Our model for `arch` and its variables {"params", "batch_stats"} from a Keras file.

    The variables work with `model.apply(variables, x, train=False)` on `preprocess(arch)(x)`.
    A VGG with its fully connected classifier only takes inputs of the size it was saved for
    (224x224 for the keras.applications files; logged). Raises WeightsError for a missing or
    unreadable file, a file of another architecture, or any tensor that does not fit, naming
    the parameter and the Keras tensor.
    """
    _check_arch(arch)
    path = require_file(path, HOW_TO_GET)
    layers = read_layers(path)
    values, unmapped = _map_layers(arch, layers, path)
    has_top = "params/head/kernel" in values
    try:
        model, input_shape = _build(arch, values, has_top, path)
        variables = _fill_variables(model, input_shape, values, has_top, path)
    except WeightsError as e:
        if unmapped:
            raise WeightsError(
                f"{e}; the file also has layer(s) {_names(unmapped)} that "
                f"{arch} does not (is it a {arch} file?)"
            ) from None
        raise
    if unmapped:
        raise WeightsError(f"{path}: layer(s) {_names(unmapped)} fit no {arch} parameter")
    if not has_top:
        log.warning(
            "%s has no classifier (a _notop file): every layer but `head` is ported; `head` "
            "(%d classes) keeps a fresh initialisation (seed 0)",
            path,
            NOTOP_CLASSES,
        )
    return model, variables


def preprocess(arch: str) -> Callable[[Any], Any]:
    """keras.applications' preprocess_input for `arch`, on raw 0-255 RGB NHWC float input.

    vgg16/vgg19/resnet50 ("caffe" mode): RGB -> BGR, minus the ImageNet BGR mean, no scaling;
    mobilenet_v2 ("tf" mode): x / 127.5 - 1. Works on numpy and jax arrays alike.
    """
    _check_arch(arch)
    if arch == "mobilenet_v2":
        return _tf_mode
    return _caffe_mode


def _tf_mode(x: Any) -> Any:
    """Scale 0..255 to -1..1."""
    return _as_float(x) / 127.5 - 1.0


def _caffe_mode(x: Any) -> Any:
    """Reverse the channels to BGR and subtract the ImageNet mean (in BGR order)."""
    x = _as_float(x)
    return x[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=x.dtype)


def _as_float(x: Any) -> Any:
    """Integer pixels (uint8 images) as float32, like Keras' cast to floatx; floats unchanged."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(np.float32)


def _check_arch(arch: str) -> None:
    """ConfigError for an architecture keras.applications ports do not cover."""
    if arch not in ARCHS:
        raise ConfigError(f"no Keras port for architecture '{arch}'; known: {', '.join(ARCHS)}")


def _names(items: list[str]) -> str:
    """A short comma-separated listing for error messages."""
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


# ----------------------------------------------------------------------------- name mapping


def _map_layers(arch: str, layers: LayerWeights, origin: str) -> tuple[dict[str, tuple], list[str]]:
    """({our_path: (array, source name)}, Keras layers with weights that `arch` has not)."""
    target = {"vgg16": _vgg_target, "vgg19": _vgg_target, "resnet50": _resnet_target}
    target = target.get(arch, _mobilenet_target)
    values, unmapped = {}, []
    for name, weights in layers.items():
        found = target(name)
        if found is None:
            unmapped.append(name)
            continue
        module, kind = found
        values.update(_layer_values(module, kind, name, weights, origin))
    return values, unmapped


def _layer_values(
    module: str, kind: str, layer: str, weights: list, origin: str
) -> dict[str, tuple]:
    """One Keras layer's weights at our paths, by Keras' weight order for the layer kind."""
    roles = _ROLES["bn" if kind == "bn" else "conv"]
    if len(weights) > len(roles) or (kind == "bn" and len(weights) != len(roles)):
        expected = ", ".join(role for role, _, _ in roles)
        raise WeightsError(
            f"{origin}: Keras layer {layer} has {len(weights)} weights, expected {expected} "
            f"(for parameters under params/{module})"
        )
    out = {}
    for (source, array), (_, collection, leaf) in zip(weights, roles, strict=False):
        if kind == "depthwise" and leaf == "kernel":
            if array.ndim != 4:
                raise WeightsError(
                    f"{origin}: {source} has shape {array.shape}, but parameter "
                    f"params/{module}/kernel needs a 4-D depthwise kernel"
                )
            # Keras (kh, kw, channels, multiplier 1) -> flax grouped conv (kh, kw, 1, channels).
            array = array.transpose(0, 1, 3, 2)
        out[f"{collection}/{module}/{leaf}"] = (array, source)
    return out


def _vgg_target(name: str) -> tuple[str, str] | None:
    """block{s}_conv{b} -> stage{s}/block{b}/conv; fc1/fc2/predictions -> fc6/fc7/head."""
    if m := re.fullmatch(r"block(\d+)_conv(\d+)", name):
        return f"stage{m[1]}/block{m[2]}/conv", "conv"
    dense = {"fc1": "fc6", "fc2": "fc7", "predictions": "head"}
    return (dense[name], "dense") if name in dense else None


def _resnet_target(name: str) -> tuple[str, str] | None:
    """conv1_{conv,bn} -> stem; conv{S}_block{B}_{k}_{conv,bn} -> stage{S-1}/block{B}/..."""
    if m := re.fullmatch(r"conv1_(conv|bn)", name):
        return f"stem/{m[1]}", m[1]
    if m := re.fullmatch(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)", name):
        stage, k, kind = int(m[1]) - 1, int(m[3]), m[4]
        leaf = f"proj_{kind}" if k == 0 else f"{kind}{k}"
        return f"stage{stage}/block{m[2]}/{leaf}", kind
    return ("head", "dense") if name == "predictions" else None


def _mobilenet_target(name: str) -> tuple[str, str] | None:
    """Conv1/bn_Conv1 -> stem; expanded_conv_* and block_N_* -> stage/block; Conv_1 -> top."""
    fixed = {
        "Conv1": ("stem/conv", "conv"),
        "bn_Conv1": ("stem/bn", "bn"),
        "Conv_1": ("top/conv", "conv"),
        "Conv_1_bn": ("top/bn", "bn"),
        "predictions": ("head", "dense"),
    }
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"(?:expanded_conv|block_(\d+))_(expand|depthwise|project)(_BN)?", name)
    if m is None:
        return None
    block_id = int(m[1] or 0)
    if (m[1] is not None and block_id == 0) or block_id >= sum(MOBILENET_STAGE_BLOCKS):
        return None
    ends = np.cumsum(MOBILENET_STAGE_BLOCKS)
    stage = int(np.searchsorted(ends, block_id, side="right"))
    block = block_id - (ends[stage - 1] if stage else 0) + 1
    kind = "bn" if m[3] else ("depthwise" if m[2] == "depthwise" else "conv")
    return f"stage{stage + 1}/block{block}/{m[2]}_{'bn' if m[3] else 'conv'}", kind


# ----------------------------------------------------------------------------- model building


def _build(
    arch: str, values: Mapping[str, tuple], has_top: bool, origin: str
) -> tuple[nn.Module, tuple[int, ...]]:
    """Our model with the Keras-equivalent options, and an input shape that fits its weights."""
    from research.models import MODELS  # the registry imports every family; only needed here

    num_classes = values["params/head/kernel"][0].shape[-1] if has_top else NOTOP_CLASSES
    input_shape = (1, 32, 32, 3)  # any size works for global-pooled models
    if arch.startswith("vgg"):
        options = {"adaptive_pool": None} if has_top else {"classifier": "gap"}
        if has_top:
            input_shape = _vgg_input_shape(values, origin)
    elif arch == "resnet50":
        options = {"conv_bias": True, "stride_in_1x1": True, "bn_epsilon": 1.001e-5}
    else:
        options = {"bn_epsilon": 1e-3, "alpha": _mobilenet_alpha(values, origin)}
    cls, defaults = MODELS[arch]
    return cls(**{**defaults, **options, "num_classes": int(num_classes)}), input_shape


def _vgg_input_shape(values: Mapping[str, tuple], origin: str) -> tuple[int, ...]:
    """An input whose flattened stage-5 output has as many features as fc1 has rows.

    Keras flattens (H/32) x (W/32) x 512 features; only their product is fixed by the file.
    """
    if "params/fc6/kernel" not in values:
        raise WeightsError(f"{origin}: no tensor for parameter params/fc6/kernel (Keras fc1)")
    kernel, source = values["params/fc6/kernel"]
    cells, rest = divmod(kernel.shape[0], 512)
    if kernel.ndim != 2 or rest or cells == 0:
        raise WeightsError(f"{origin}: {source} has shape {kernel.shape}; fc1 needs 512*h*w rows")
    side = math.isqrt(cells)
    size = (
        f"{32 * side}x{32 * side}"
        if side * side == cells
        else f"H x W with (H//32)*(W//32) = {cells}"
    )
    log.info("%s: Keras VGG classifier for %s inputs (%d spatial cells)", origin, size, cells)
    return (1, 32, 32 * cells, 3)


def _mobilenet_alpha(values: Mapping[str, tuple], origin: str) -> float:
    """The width multiplier whose channel counts (stem and every project conv) fit the file."""
    found = {
        path: array.shape[-1]
        for path, (array, _) in values.items()
        if path.endswith(("stem/conv/kernel", "project_conv/kernel", "top/conv/kernel"))
    }
    if "params/stem/conv/kernel" not in found:
        raise WeightsError(f"{origin}: no tensor for parameter params/stem/conv/kernel (Conv1)")
    for alpha in MOBILENET_ALPHAS:
        expected = _mobilenet_widths(alpha)
        if all(expected.get(path, width) == width for path, width in found.items()):
            return alpha
    raise WeightsError(
        f"{origin}: Conv1 has {found['params/stem/conv/kernel']} filters, which fits no "
        f"MobileNetV2 alpha in {MOBILENET_ALPHAS} (parameter params/stem/conv/kernel)"
    )


def _mobilenet_widths(alpha: float) -> dict[str, int]:
    """Keras MobileNetV2's output channels per stem/project/top kernel for width `alpha`."""
    channels = (16, 24, 32, 64, 96, 160, 320)
    widths = {"params/stem/conv/kernel": make_divisible(32 * alpha)}
    for s, (c, n) in enumerate(zip(channels, MOBILENET_STAGE_BLOCKS, strict=True), start=1):
        for b in range(1, n + 1):
            widths[f"params/stage{s}/block{b}/project_conv/kernel"] = make_divisible(int(c * alpha))
    widths["params/top/conv/kernel"] = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    return widths


def _fill_variables(
    model: nn.Module,
    input_shape: tuple[int, ...],
    values: Mapping[str, tuple],
    has_top: bool,
    origin: str,
) -> dict[str, Any]:
    """The ported variables; without a top, the head comes from a real init with seed 0."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    template = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    if has_top:
        return fill(template, values, origin=origin)
    # Only the head is materialised: jit drops the rest of the init, which would cost seconds.
    zeros = jnp.zeros(input_shape, jnp.float32)
    head = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"]["head"])
    template = flax.core.unfreeze(template)
    template["params"]["head"] = head(zeros)
    return fill(template, values, origin=origin, ignore_missing=("params/head/",))
