"""Torchvision ImageNet classifiers (VGG, ResNet) as our VGG / ResNet variables.

Reads a state_dict written by `torch.save(model.state_dict(), PATH)` (.pth/.pt, loaded with
`weights_only=True`, so nothing is unpickled but tensors) or a .safetensors file (read without
torch), renames torchvision's tensors to our parameter paths and converts their layouts: conv
OIHW -> HWIO, linear (out, in) -> (in, out), and the first VGG classifier layer's input from
torch's (C, H, W) flatten order to our (H, W, C). `common.fill` then checks every tensor
against the model, so a missing, unexpected or mis-shaped one names the parameter.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError, WeightsError
from research.models import MODELS, get_model
from research.port.common import fill, require_file

VGG_ARCHS = tuple(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn"))
RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHS = VGG_ARCHS + RESNET_ARCHS

# torchvision's ImageNet normalisation (transforms.Normalize in every classifier's weights).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Square input for shape-only initialisation; any size reaching 7x7 after VGG's five pools works.
_INIT_SIZE = 224
_TORCH_SUFFIXES = (".pth", ".pt")
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}

Values = dict[str, tuple[np.ndarray, str]]


@dataclasses.dataclass(frozen=True)
class Normalize:
    """`(x * scale - mean) / std` per channel: 0-255 RGB NHWC images -> the model's input."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: Any) -> jax.Array:
        """Normalised float32 copy of `x` (numpy or JAX, channels last)."""
        x = jnp.asarray(x, jnp.float32) * self.scale
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


def preprocess(arch: str) -> Normalize:
    """The input transform the torchvision weights expect: x / 255, then ImageNet mean/std."""
    _check_arch(arch)
    return Normalize(scale=1 / 255, mean=MEAN, std=STD)


def how_to_get(arch: str, path: str | os.PathLike) -> str:
    """How to produce the weights file offline, as one line for an error message."""
    return (
        'on a machine with network run `python -c "import torch, torchvision; '
        f"torch.save(torchvision.models.{arch}(weights='DEFAULT').state_dict(), "
        f"'{os.fspath(path)}')\"` and copy the file here"
    )


def load(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """`(model, {"params", "batch_stats"?})` for a torchvision `arch` state_dict at `path`.

    num_classes (and, for VGG, the classifier width and the pooled spatial size) come from the
    file; the rest must match `arch`, else a WeightsError names the offending tensor.
    """
    _check_arch(arch)
    path = require_file(path, how_to_get(arch, path))
    tensors = read_state_dict(path)
    convert = _vgg_values if arch in VGG_ARCHS else _resnet_values
    num_classes, options, values = convert(arch, tensors, path)
    model = get_model({"name": arch, **options}, num_classes=num_classes)
    return model, fill(abstract_variables(model), values, origin=path)


def abstract_variables(model: nn.Module) -> Any:
    """The model's variable tree as ShapeDtypeStructs (nothing is computed or allocated)."""
    x = jax.ShapeDtypeStruct((1, _INIT_SIZE, _INIT_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Name -> float32/int numpy array from a .pth/.pt or .safetensors state_dict."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in _TORCH_SUFFIXES:
        return _read_torch(path)
    raise WeightsError(
        f"{path}: unknown weights format '{suffix}'; expected a state_dict as .pth, .pt "
        "or .safetensors"
    )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file  # noqa: PLC0415  (only this format needs it)

    try:
        return dict(load_file(path))
    except Exception as e:  # the library raises its own, untyped errors on a damaged file
        raise WeightsError(f"{path}: not a readable .safetensors file ({_first_line(e)})") from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415  (only .pth files need PyTorch)
    except ImportError:
        raise WeightsError(
            f"{path}: reading .pth/.pt files needs PyTorch: pip install torch, or convert the "
            "state_dict to .safetensors (safetensors.torch.save_file) where torch is installed"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, or pickled objects that weights_only refuses
        raise WeightsError(
            f"{path}: not a readable state_dict ({_first_line(e)}); save "
            "`model.state_dict()`, not the model"
        ) from None
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{path}: entry '{name}' is a {type(value).__name__}, not a tensor; save "
                "`model.state_dict()` itself, not a training checkpoint around it"
            )
    return {name: _tensor_to_numpy(value) for name, value in obj.items()}


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
    """Floating tensors as float32 (numpy has no bfloat16); integer ones as they are."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy()


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown torchvision arch '{arch}'; known: {', '.join(ARCHS)}")


# --- VGG ---------------------------------------------------------------------------------------


def _vgg_values(
    arch: str, tensors: Mapping[str, np.ndarray], origin: str
) -> tuple[int, dict, Values]:
    """num_classes, other model options and `{our path: (array, torch name)}` for a VGG."""
    batch_norm = any(re.fullmatch(r"features\.\d+\.running_mean", k) for k in tensors)
    if batch_norm != _default(arch, "batch_norm"):
        have, use = ("with", f"{arch}_bn") if batch_norm else ("without", arch.removesuffix("_bn"))
        raise WeightsError(
            f"{origin}: holds a VGG {have} BatchNorm (features.1.running_mean is "
            f"{'present' if batch_norm else 'absent'}), not {arch}; use arch {use}"
        )
    layers = _vgg_layers(tensors, batch_norm, origin)
    values: Values = {}
    unknown = []
    for name, array in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if name == "classifier.0.weight":
            continue  # its input axis needs a permutation: _vgg_head
        ours = layers.get(module)
        if ours is None:
            unknown.append(name)
        elif ours.endswith("/bn"):
            _put_bn(values, ours, leaf, array, name)
        else:
            _put_conv_or_dense(values, ours, leaf, array, name)
    _reject_unknown(unknown, arch, origin)
    num_classes, options = _vgg_head(arch, tensors, values, layers, origin)
    return num_classes, options, values


def _vgg_layers(tensors: Mapping[str, np.ndarray], batch_norm: bool, origin: str) -> dict:
    """torch module name -> our module path, from the positions of the convs in `features`.

    Inside a stage torchvision puts conv, [bn], relu; a stage ends with a max pool, so the
    index step between two convs is one larger across a stage boundary.
    """
    convs = sorted(
        int(m[1])
        for k, v in tensors.items()
        if (m := re.fullmatch(r"features\.(\d+)\.weight", k)) and v.ndim == 4
    )
    if not convs:
        raise WeightsError(f"{origin}: no features.N.weight conv kernels; not a torchvision VGG")
    within = 3 if batch_norm else 2
    stage, block = 1, 0
    layers = {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "head"}
    for previous, index in zip([None, *convs], convs, strict=False):
        step = within if previous is None else index - previous
        if step not in (within, within + 1):
            raise WeightsError(
                f"{origin}: features.{index}.weight follows features.{previous}.weight; "
                "not torchvision's VGG layer order"
            )
        stage, block = (stage + 1, 1) if step == within + 1 else (stage, block + 1)
        layers[f"features.{index}"] = f"stage{stage}/block{block}/conv"
        if batch_norm:
            layers[f"features.{index + 1}"] = f"stage{stage}/block{block}/bn"
    return layers


def _vgg_head(
    arch: str, tensors: Mapping[str, np.ndarray], values: Values, layers: dict, origin: str
) -> tuple[int, dict]:
    """Puts fc6 with its input axis permuted from (C, H, W) to (H, W, C); returns num_classes
    and the options (pooled size, classifier width) that differ from `arch`'s defaults."""
    for name in ("classifier.0.weight", "classifier.6.weight"):
        if name not in tensors:
            raise WeightsError(f"{origin}: no tensor {name}; not a torchvision VGG classifier")
    last_conv = max((k for k, v in layers.items() if v.endswith("/conv")), key=_index)
    channels = tensors[f"{last_conv}.weight"].shape[0]
    weight = tensors["classifier.0.weight"]
    size = math.isqrt(weight.shape[1] // channels)
    if size * size * channels != weight.shape[1]:
        raise WeightsError(
            f"{origin}: classifier.0.weight has {weight.shape[1]} inputs, not {channels} "
            "channels times a square pooled size"
        )
    # Permute within each output row (contiguous copies), then transpose as a view: for
    # torchvision's 4096 x 25088 matrix this is several times faster than one 4-d transpose.
    rows = weight.reshape(weight.shape[0], channels, size * size).transpose(0, 2, 1)
    kernel = np.ascontiguousarray(rows).reshape(weight.shape[0], -1).T
    values["params/fc6/kernel"] = (kernel, "classifier.0.weight")
    found = {"adaptive_pool": size, "fc_features": weight.shape[0]}
    options = {k: v for k, v in found.items() if v != _default(arch, k)}
    return tensors["classifier.6.weight"].shape[0], options


def _index(module: str) -> int:
    return int(module.rsplit(".", 1)[1])


# --- ResNet ------------------------------------------------------------------------------------

_RESNET_MODULES = (
    (r"conv1", "stem/conv"),
    (r"bn1", "stem/bn"),
    (r"layer(\d+)\.(\d+)\.(conv|bn)(\d)", "stage{0}/block{1}/{2}{3}"),
    (r"layer(\d+)\.(\d+)\.downsample\.0", "stage{0}/block{1}/proj_conv"),
    (r"layer(\d+)\.(\d+)\.downsample\.1", "stage{0}/block{1}/proj_bn"),
    (r"fc", "head"),
)


def _resnet_values(
    arch: str, tensors: Mapping[str, np.ndarray], origin: str
) -> tuple[int, dict, Values]:
    """num_classes, other model options (none) and `{our path: (array, torch name)}`."""
    bottleneck = "layer1.0.conv3.weight" in tensors
    if bottleneck != (_default(arch, "block") == "bottleneck"):
        kind, use = ("bottleneck", "resnet50/101/152") if bottleneck else ("basic", "resnet18/34")
        raise WeightsError(
            f"{origin}: holds a ResNet with {kind} blocks (layer1.0.conv3.weight is "
            f"{'present' if bottleneck else 'absent'}), not {arch}; use arch {use}"
        )
    values: Values = {}
    unknown = []
    for name, array in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        ours = _resnet_module(module)
        if ours is None:
            unknown.append(name)
        elif "bn" in ours.rsplit("/", 1)[-1]:
            _put_bn(values, ours, leaf, array, name)
        else:
            _put_conv_or_dense(values, ours, leaf, array, name)
    _reject_unknown(unknown, arch, origin)
    if "fc.weight" not in tensors:
        raise WeightsError(f"{origin}: no tensor fc.weight; not a torchvision ResNet classifier")
    return tensors["fc.weight"].shape[0], {}, values


def _resnet_module(module: str) -> str | None:
    """Our path for a torchvision ResNet module name (blocks count from 1 here, 0 there)."""
    for pattern, template in _RESNET_MODULES:
        match = re.fullmatch(pattern, module)
        if match:
            groups = list(match.groups())
            if len(groups) > 1:
                groups[1] = str(int(groups[1]) + 1)
            return template.format(*groups)
    return None


# --- shared ------------------------------------------------------------------------------------


def _put_conv_or_dense(values: Values, ours: str, leaf: str, array: np.ndarray, name: str) -> None:
    """weight -> kernel (conv OIHW -> HWIO, linear (out, in) -> (in, out)); bias as it is."""
    if leaf == "bias":
        values[f"params/{ours}/bias"] = (array, name)
    elif leaf == "weight":
        kernel = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
        values[f"params/{ours}/kernel"] = (kernel, name)
    else:  # an unknown leaf becomes a path the model lacks, which `fill` reports by name
        values[f"params/{ours}/{leaf}"] = (array, name)


def _put_bn(values: Values, ours: str, leaf: str, array: np.ndarray, name: str) -> None:
    collection, ours_leaf = _BN_LEAVES.get(leaf, ("params", leaf))
    values[f"{collection}/{ours}/{ours_leaf}"] = (array, name)


def _reject_unknown(unknown: list[str], arch: str, origin: str) -> None:
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise WeightsError(
            f"{origin}: tensor(s) {', '.join(sorted(unknown)[:3])}{more} fit no layer of "
            f"torchvision's {arch}"
        )


def _default(arch: str, field: str) -> Any:
    """`field` of the registry entry `arch`: its registered default, else the class default."""
    cls, defaults = MODELS[arch]
    return defaults[field] if field in defaults else cls.__dataclass_fields__[field].default
