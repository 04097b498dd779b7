"""Reading Keras weight files with h5py alone (no keras import, nothing unpickled).

Three formats: legacy HDF5 (the keras.applications download files and their `_notop` variants: a
root attribute `layer_names`, one group per layer with an attribute `weight_names`; or a
full-model .h5 holding them under `model_weights`), Keras 3 `.weights.h5`
(`layers/<class>_<k>/vars/<i>`, the layer's name in the `vars` group's attribute `name`) and
`.keras` zip archives (their `model.weights.h5`, read in memory; `config.json` supplies layer
names that older Keras versions did not write). Within a layer, weights come in Keras' order
(kernel, bias; gamma, beta, moving_mean, moving_variance).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping

import h5py
import numpy as np

from research.errors import WeightsError

# {Keras layer name: [(source tensor name, array), ...]}
LayerWeights = dict[str, list[tuple[str, np.ndarray]]]


def read_layers(path: str) -> LayerWeights:
    """{Keras layer name: [(source tensor name, array), ...]} for every layer with weights.

    Detects the format from the file's content, not its suffix.
    """
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return _read_h5(f, path, config=None)
        if zipfile.is_zipfile(path):
            return _read_keras_zip(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        # h5py and zipfile report truncated or inconsistent files with these.
        raise WeightsError(f"{path}: unreadable Keras weights file ({e})") from None
    raise WeightsError(f"{path} is neither an HDF5 (.h5) nor a zip (.keras) Keras weights file")


def _read_keras_zip(path: str) -> LayerWeights:
    """The weights of a `.keras` archive, read in memory; config.json names unnamed layers."""
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        if "model.weights.h5" not in members:
            raise WeightsError(f"{path}: zip archive without model.weights.h5 (not a .keras file)")
        config = json.loads(archive.read("config.json")) if "config.json" in members else None
        buffer = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(buffer, "r") as f:
        return _read_h5(f, path, config=config)


def _read_h5(f: h5py.File, path: str, config: Mapping | None) -> LayerWeights:
    """Dispatch on the HDF5 layout: legacy (layer_names), full-model legacy, or Keras 3."""
    if _has_attr_list(f, "layer_names"):
        return _read_legacy(f)
    if isinstance(f.get("model_weights"), h5py.Group):
        return _read_legacy(f["model_weights"])
    if isinstance(f.get("layers"), h5py.Group):
        return _read_keras3(f["layers"], path, config)
    raise WeightsError(f"{path}: HDF5 file without Keras weights (no layer_names, no layers/)")


def _has_attr_list(group: h5py.Group, name: str) -> bool:
    """Whether `group` carries the (possibly chunked) attribute `name`."""
    return name in group.attrs or f"{name}0" in group.attrs


def _attr_list(group: h5py.Group, name: str) -> list[str]:
    """A string-list attribute; Keras splits long ones into `name0`, `name1`, ... (64 KB limit)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    items = [item for chunk in chunks for item in np.atleast_1d(chunk)]
    return [item.decode("utf8") if isinstance(item, bytes) else str(item) for item in items]


def _read_legacy(root: h5py.Group) -> LayerWeights:
    """Legacy layout: root attr layer_names; group per layer with attr weight_names (paths)."""
    layers = {}
    for name in _attr_list(root, "layer_names"):
        group = root[name]
        weight_names = _attr_list(group, "weight_names")
        if weight_names:
            layers[name] = [(w, np.asarray(group[w])) for w in weight_names]
    return layers


def _read_keras3(root: h5py.Group, path: str, config: Mapping | None) -> LayerWeights:
    """Keras 3 layout: layers/<class_snake>[_k]/vars/{0,1,..}; the vars group names its layer."""
    by_key = _keras3_names_from_config(config) if config else {}
    layers = {}
    for key in root:
        weights = root[key].get("vars")
        if not isinstance(weights, h5py.Group) or len(weights) == 0:
            continue
        name = weights.attrs.get("name", by_key.get(key))
        if name is None:
            raise WeightsError(
                f"{path}: layer group layers/{key} does not say which layer it is (written by an "
                "older Keras); load the .keras file instead, or re-save it with a recent Keras"
            )
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        layers[name] = [
            (f"{name}/vars/{i}", np.asarray(weights[str(i)])) for i in range(len(weights))
        ]
    return layers


def _keras3_names_from_config(config: Mapping) -> dict[str, str]:
    """{layers/ key: layer name}: Keras numbers a functional model's layers per class, in order."""
    counts: dict[str, int] = {}
    names = {}
    for layer in config.get("config", {}).get("layers", []):
        base = _snake_case(layer["class_name"])
        key = base if base not in counts else f"{base}_{counts[base] + 1}"
        counts[base] = counts.get(base, -1) + 1
        names[key] = layer.get("name") or layer["config"]["name"]
    return names


def _snake_case(name: str) -> str:
    """Keras' class-name -> group-name rule (BatchNormalization -> batch_normalization)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
