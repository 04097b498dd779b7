"""Random-access data sources by TFDS name, plus in-memory arrays.

Every dataset is reached through its TFDS name. Public datasets must already be prepared in
ArrayRecord format (training machines often have no network); our offline builders (data that
ships inside installed packages) are built into the data dir on first use.
"""

import contextlib
import dataclasses
import os
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from research.data import folder
from research.data.builders.digits import Digits
from research.data.builders.digits_canvas import DigitsCanvas
from research.data.builders.series import Co2, Elnino, Sunspots
from research.data.builders.synthetic_sequences import Adding, CopyMemory
from research.data.builders.xor import Xor
from research.errors import DataError

# Builders whose data ships with installed packages or is generated; built on first use, offline.
OFFLINE_BUILDERS: Mapping[str, type[tfds.core.DatasetBuilder]] = types.MappingProxyType(
    {
        "digits": Digits,
        "digits_canvas": DigitsCanvas,
        "xor": Xor,
        "sunspots": Sunspots,
        "co2": Co2,
        "elnino": Elnino,
        "adding": Adding,
        "copy_memory": CopyMemory,
    }
)

_RANDOM_ACCESS_FORMATS = (tfds.core.FileFormat.ARRAY_RECORD,)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a training run needs to know about a dataset before reading it."""

    name: str
    splits: dict[str, int]  # split name -> number of examples
    num_classes: int | None  # from the "label" ClassLabel feature, if any
    # Per-example shape (None for a variable dimension) and dtype name of each stored feature;
    # nested features are flattened with "/".
    features: dict[str, tuple[tuple[int | None, ...], str]]


class ArraySource:
    """A dict of equal-length numpy arrays as a random-access source of per-example dicts.

    Implements the grain `RandomAccessDataSource` protocol (len, __getitem__, __getitems__).
    """

    def __init__(self, arrays: Mapping[str, Any]):
        self._arrays = {key: np.asarray(value) for key, value in arrays.items()}
        lengths = {key: len(value) for key, value in self._arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource needs equal-length arrays, got lengths {lengths}")
        self._length = next(iter(lengths.values()))

    @property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """The wrapped arrays, read-only view of the mapping."""
        return types.MappingProxyType(self._arrays)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: value[index] for key, value in self._arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        # One fancy-indexing gather per feature, then cheap per-example views of the result.
        taken = self.take(indices)
        return [{key: value[i] for key, value in taken.items()} for i in range(len(indices))]

    def take(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Return the examples at `indices` as a dict of stacked arrays (one gather per feature)."""
        index = np.asarray(indices, dtype=np.int64)
        return {key: value[index] for key, value in self._arrays.items()}

    def __repr__(self) -> str:
        shapes = {key: value.shape for key, value in self._arrays.items()}
        return f"ArraySource(len={self._length}, shapes={shapes})"


def resolve_data_dir(data_dir: str | None) -> str:
    """Return `data_dir`, or TFDS's own default ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    path = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(path)


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Describe dataset `name` (splits, classes, features), building it if it is offline-only.

    `name` may carry a config or version as in TFDS ("name/config", "name:1.0.0"), or be
    "folder:ROOT" for a folder of ROOT/<split>/<class>/ images (research.data.folder).
    """
    if folder.is_folder(name):
        return DatasetInfo(
            name=name,
            splits=folder.split_sizes(name),
            num_classes=len(folder.classes(name)),
            features={"image": ((None, None, 3), "uint8"), "label": ((), "int64")},
        )
    info = _prepared_builder(name, data_dir).info
    label = dict(info.features.items()).get("label")
    return DatasetInfo(
        name=name,
        splits={split: info.splits[split].num_examples for split in info.splits},
        num_classes=label.num_classes if isinstance(label, tfds.features.ClassLabel) else None,
        features=_feature_specs(info.features),
    )


def open_source(
    name: str, split: str, data_dir: str | None = None, *, in_memory: bool = False
) -> Sequence[dict[str, Any]]:
    """Open `split` of dataset `name` as a random-access source for grain.

    `split` takes TFDS slicing ("train[:90%]"). With `in_memory=True` the split is read once
    into numpy arrays (an `ArraySource`): much faster per step for small datasets.
    """
    if folder.is_folder(name):
        source = folder.FolderSource(name, split)
        return _load_in_memory(name, split, source) if in_memory else source
    builder = _prepared_builder(name, data_dir)
    try:
        source = builder.as_data_source(split=split)
    except ValueError as e:
        available = ", ".join(builder.info.splits)
        raise DataError(
            f"dataset {name!r} has no split {split!r} ({_first_line(e)}); use one of: {available} "
            "(TFDS slices such as 'train[:90%]' work too)"
        ) from None
    return _load_in_memory(name, split, source) if in_memory else source


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Return the TFDS builder of `name`, prepared in a random-access format, or a DataError."""
    data_dir = resolve_data_dir(data_dir)
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        if builder.name not in OFFLINE_BUILDERS:
            raise DataError(
                f"dataset {name!r} is not prepared in {data_dir}; on a machine with network run "
                f"`tfds build {name} --file_format=array_record --data_dir=DIR`, then copy DIR "
                f"to {data_dir} (or point $TFDS_DATA_DIR / the data dir setting at it)"
            )
        builder = _build_offline(builder, name, data_dir)
    file_format = builder.info.file_format
    if file_format not in _RANDOM_ACCESS_FORMATS:
        raise DataError(
            f"dataset {name!r} in {data_dir} is stored as {getattr(file_format, 'value', None)}, "
            f"which has no random access; rebuild it with "
            f"`tfds build {name} --file_format=array_record --data_dir={data_dir}`"
        )
    return builder


def _build_offline(
    builder: tfds.core.DatasetBuilder, name: str, data_dir: str
) -> tfds.core.DatasetBuilder:
    """Build an offline dataset into `data_dir` as ArrayRecord, quietly; return its builder."""
    try:
        with _quiet_progress_bars():
            builder.download_and_prepare(file_format="array_record")
        return builder
    except FileExistsError:
        # Several processes on one host may build at once; TFDS writes to a temporary folder
        # and renames it, so a loser fails on the rename although the data is there.
        rebuilt = _builder(name, data_dir)
        if not rebuilt.is_prepared():
            raise
        return rebuilt


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Construct the TFDS builder, turning TFDS's multi-page errors into one-line DataErrors."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        offline = ", ".join(OFFLINE_BUILDERS)
        raise DataError(
            f"unknown dataset {name!r}: neither a TFDS dataset nor an offline builder "
            f"({offline}); check the spelling against `tfds.list_builders()`"
        ) from None
    except (ValueError, AssertionError) as e:  # bad config or version
        raise DataError(f"dataset {name!r}: {_first_line(e)}; fix the config or version") from None


def _first_line(error: Exception) -> str:
    """The first line of an error message, to keep DataErrors to one line."""
    return (str(error).splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide TFDS's per-split progress bars while building, then restore the user's setting."""
    # TFDS exposes only a setter, so read the current state from its module (default: shown).
    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def _feature_specs(features: tfds.features.FeaturesDict) -> dict[str, tuple[tuple, str]]:
    """Flatten TFDS tensor infos into {"a/b": (shape, dtype name)}."""
    specs = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                visit(f"{prefix}/{key}" if prefix else key, child)
        else:
            specs[prefix] = (tuple(node.shape), np.dtype(node.np_dtype).name)

    visit("", features.get_tensor_info())
    return specs


def _load_in_memory(name: str, split: str, source: Sequence[dict[str, Any]]) -> ArraySource:
    """Read every record of `source` once and stack each feature into one numpy array."""
    records = [source[i] for i in range(len(source))]
    if not records:
        raise DataError(f"dataset {name!r} split {split!r} is empty; choose a non-empty split")
    try:
        return ArraySource({key: np.stack([r[key] for r in records]) for key in records[0]})
    except ValueError as e:
        raise DataError(
            f"dataset {name!r} split {split!r} cannot be held as arrays ({e}); "
            "open it with in_memory=False"
        ) from None
