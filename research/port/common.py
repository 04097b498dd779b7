"""Shared by the porters: fill a model's variable tree from named source tensors, and provenance.

A porter turns a weights file into `{our_path: (array, source_name)}`; `fill` checks it against
the model's own (abstract) variables so that every mismatch names both sides, and nothing that
the model does not expect is silently dropped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from research.errors import WeightsError

PyTree = Any


def fill(
    template: Mapping[str, Any],
    values: Mapping[str, tuple[np.ndarray, str]],
    *,
    origin: str,
    ignore_missing: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Variables shaped like `template` with every leaf taken from `values`.

    `template` is `{"params": ..., "batch_stats": ...}` (arrays or ShapeDtypeStructs); keys of
    `values` are slash paths such as "params/stage1/block1/conv/kernel", mapped to the array and
    the source tensor's name. A missing leaf, a shape mismatch or a source tensor that fits no
    leaf raises WeightsError naming the parameter and `origin` (the file). Paths starting with
    one of `ignore_missing` keep the template's value (e.g. a freshly initialised head).
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(template), sep="/")
    unused = sorted(set(values) - set(flat))
    if unused:
        names = ", ".join(f"{values[k][1]} (-> {k})" for k in unused[:5])
        raise WeightsError(f"{origin}: tensor(s) the model has no parameter for: {names}")
    out = {}
    for path, leaf in flat.items():
        if path not in values:
            if ignore_missing and path.startswith(ignore_missing):
                out[path] = leaf
                continue
            raise WeightsError(f"{origin}: no tensor for parameter {path} {tuple(leaf.shape)}")
        array, name = values[path]
        if tuple(array.shape) != tuple(leaf.shape):
            raise WeightsError(
                f"{origin}: {name} has shape {tuple(array.shape)} but parameter {path} "
                f"needs {tuple(leaf.shape)}"
            )
        out[path] = np.asarray(array, dtype=leaf.dtype)
    return flax.traverse_util.unflatten_dict(out, sep="/")


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (weights files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(path: str | os.PathLike, how_to_get: str) -> str:
    """The path as a string, or a WeightsError saying how to obtain the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} does not exist; {how_to_get}")
    return path
