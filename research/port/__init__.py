"""Pretrained weights from other frameworks as our models' variables, with provenance.

    model, variables = research.port.load_pretrained("torchvision", "resnet50", "resnet50.pth")
    logits, aux = model.apply(variables, research.port.preprocess("torchvision", "resnet50")(x),
                              train=False)

`write_checkpoint` (behind `launch/port.py`) stores a port as a checkpoint directory that a
training config reads through `init_from`, next to a `port.json` saying where it came from and
how to rebuild the model. Each source's porter is imported only when used, so reading
torchvision files never needs Keras and vice versa.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import numpy as np

from research import rundir, storage
from research.errors import ConfigError, WorkdirError
from research.models import MODELS
from research.port import torchvision as _torchvision
from research.port.common import require_file, sha256

SOURCES = ("keras", "torchvision")
ARCHS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "keras": ("vgg16", "vgg19", "resnet50", "mobilenet_v2"),
        "torchvision": _torchvision.ARCHS,
    }
)
# What keras.applications downloads into ~/.keras/models/ for each arch (weights="imagenet").
KERAS_FILES: Mapping[str, str] = MappingProxyType(
    {
        "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    }
)
# Module fields a training config decides, never the weights: left out of `model_config`.
_RUN_FIELDS = ("parent", "name", "num_classes", "bn_axis_name", "dtype")
_VERSIONED = ("research", "torch", "keras", "jax", "flax", "numpy", "safetensors", "h5py")


def check(source: str, arch: str) -> None:
    """ConfigError listing the choices when `source` or `arch` is not one we port."""
    if source not in ARCHS:
        raise ConfigError(f"unknown weights source '{source}'; known: {', '.join(SOURCES)}")
    if arch not in ARCHS[source]:
        raise ConfigError(f"unknown {source} arch '{arch}'; known: {', '.join(ARCHS[source])}")


def how_to_get(source: str, arch: str, path: str | os.PathLike) -> str:
    """One line saying how to obtain the weights file for `source`/`arch` on a networked machine."""
    if source == "torchvision":
        return _torchvision.how_to_get(arch, path)
    return (
        f"it is Keras' {KERAS_FILES[arch]} (or its _notop variant): on a machine with network, "
        "building the keras.applications model with weights='imagenet' downloads it to "
        "~/.keras/models/; copy it here"
    )


def load_pretrained(source: str, arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """`(model, variables)` from a `source` ("keras" | "torchvision") weights file for `arch`.

    `variables` holds "params" (and "batch_stats" for models with BatchNorm) ready for
    `model.apply(variables, preprocess(source, arch)(images), train=False)`.
    """
    check(source, arch)
    path = require_file(path, how_to_get(source, arch, path))
    return _porter(source).load(arch, path)


def preprocess(source: str, arch: str) -> Callable[[Any], Any]:
    """The transform from 0-255 RGB NHWC images to the input `source`'s `arch` weights expect."""
    check(source, arch)
    return _porter(source).preprocess(arch)


def model_config(model: nn.Module, arch: str) -> dict[str, Any]:
    """`{"name": registry name, "num_classes": n, **options}` rebuilding `model` through
    `research.models.get_model` (options: only the fields that differ from the registry's)."""
    name = _registry_name(model, arch)
    cls, defaults = MODELS[name]
    config = {"name": name, "num_classes": model.num_classes}
    for field in dataclasses.fields(cls):
        if field.name in _RUN_FIELDS:
            continue
        default = defaults.get(field.name, field.default)
        if getattr(model, field.name) != default:
            config[field.name] = getattr(model, field.name)
    return config


def _registry_name(model: nn.Module, arch: str) -> str:
    """`arch` when it names the model's class in the registry, else the entry of that class
    whose defaults differ from the model in the fewest fields."""
    candidates = [name for name, (cls, _) in MODELS.items() if cls is type(model)]
    if arch in candidates:
        return arch
    if not candidates:
        raise ConfigError(f"{type(model).__name__} is not in research.models.MODELS")

    def differences(name: str) -> int:
        defaults = MODELS[name][1]
        return sum(getattr(model, k) != v for k, v in defaults.items())

    return min(candidates, key=differences)


def _porter(source: str) -> Any:
    """The source's porter module, imported on first use (its framework may be absent)."""
    return importlib.import_module(f"research.port.{source}")


def write_checkpoint(
    source: str, arch: str, path: str | os.PathLike, output: str | os.PathLike
) -> tuple[dict, bool]:
    """Ports `path` into `output`: `checkpoints/` (step 0: params and batch_stats, read by
    `init_from=output`) and `port.json` (provenance, written last). Returns `(record, written)`;
    `written` is False when `output` already holds this same port. A directory holding anything
    else is refused with a WorkdirError before anything is read or written."""
    from research.checkpoint import Checkpointer  # noqa: PLC0415  (orbax only when saving)
    from research.manifest import write_json  # noqa: PLC0415

    check(source, arch)
    path = require_file(path, how_to_get(source, arch, path))
    output = storage.workdir_path(output)
    digest = sha256(path)
    existing = _existing_port(output)
    if existing is not None:
        _check_same_port(output, existing, source, arch, digest)
        return existing, False
    model, variables = load_pretrained(source, arch, path)
    record = _record(source, arch, path, digest, model, variables)
    state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    with Checkpointer(rundir.RunDir(output).checkpoints, async_save=False) as checkpointer:
        checkpointer.save(0, state, metadata={"port": record})
    write_json(rundir.RunDir(output).port, record)
    return record, True


def _existing_port(output: Path) -> dict | None:
    """The port recorded in `output`, None for a new or empty directory; WorkdirError otherwise."""
    if output.exists() and not output.is_dir():
        raise WorkdirError(f"--output {output} exists and is not a directory")
    record = rundir.RunDir(output).port
    if record.exists():
        try:
            return json.loads(record.read_text())
        except json.JSONDecodeError:
            raise WorkdirError(
                f"{record} is not valid JSON; delete {output} to port again"
            ) from None
    if output.exists() and any(output.iterdir()):
        raise WorkdirError(
            f"{output} is not empty and holds no port.json (another run, or an interrupted "
            "port); use another --output or delete it"
        )
    return None


def _check_same_port(output: Path, existing: dict, source: str, arch: str, digest: str) -> None:
    """WorkdirError naming the first difference between the recorded port and this one."""
    wanted = {"source": source, "arch": arch, "weights.sha256": digest}
    have = {
        "source": existing.get("source"),
        "arch": existing.get("arch"),
        "weights.sha256": existing.get("weights", {}).get("sha256"),
    }
    for key, value in wanted.items():
        if have[key] != value:
            raise WorkdirError(
                f"{output} holds another port ({key} {have[key]!r}, not {value!r}); "
                "use another --output or delete it"
            )


def _record(
    source: str, arch: str, path: str, digest: str, model: nn.Module, variables: dict
) -> dict:
    """The port.json contents: what was ported, from which file, by which versions, when."""
    from research.manifest import git_info, package_versions  # noqa: PLC0415

    return {
        "source": source,
        "arch": arch,
        "model": model_config(model, arch),
        "num_params": int(sum(np.size(v) for v in _leaves(variables.get("params", {})))),
        "preprocessing": _describe(preprocess(source, arch)),
        "weights": {
            "path": os.path.abspath(path),
            "sha256": digest,
            "size_bytes": os.path.getsize(path),
        },
        "versions": package_versions(_VERSIONED),
        "git": git_info(),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _describe(transform: Callable) -> dict:
    """A JSON description of an input transform: its fields when it is a dataclass."""
    description = {"input": "RGB images, NHWC, values 0-255"}
    if dataclasses.is_dataclass(transform):
        return {
            **description,
            "transform": type(transform).__name__,
            **dataclasses.asdict(transform),
        }
    name = getattr(transform, "__qualname__", type(transform).__qualname__)
    doc = (transform.__doc__ or "").strip().splitlines()
    return {
        **description,
        "transform": f"{transform.__module__}.{name}",
        "description": doc[0] if doc else "",
    }


def _leaves(tree: Any) -> list:
    if isinstance(tree, Mapping):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [tree]
