"""Label subsets of a source: keep some classes (relabelled 0..k-1) and k examples per class.

Transfer studies pretrain on some classes and adapt to others with few labels. The per-class
selection takes the first n examples of each class in a permutation seeded by `seed`, so the
5-shot set is contained in the 10-shot set, and the result does not depend on the host count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from research.data.sources import ArraySource
from research.errors import DataError

Record = dict[str, Any]


class SubsetSource:
    """Records `indices` of `source`, labels mapped through `label_map`; random access."""

    def __init__(self, source: Sequence[Record], indices: np.ndarray, label_map: np.ndarray):
        self._source, self._indices, self._map = source, indices, label_map

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Record:
        record = dict(self._source[int(self._indices[index])])
        record["label"] = self._map[int(record["label"])]
        return record

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        return [self[int(i)] for i in indices]


def labels_of(source: Sequence[Record]) -> np.ndarray:
    """Every record's label (one array read for in-memory sources, else a pass over records)."""
    if isinstance(source, ArraySource):
        return np.asarray(source.arrays["label"])
    return np.asarray([int(source[i]["label"]) for i in range(len(source))])


def select(
    source: Sequence[Record],
    *,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    seed: int = 0,
    split: str = "",
) -> Sequence[Record]:
    """The records of `classes` (relabelled by position), `per_class` of each when given.

    Asking for more examples of a class than the split holds is a DataError.
    """
    labels = labels_of(source)
    classes = list(range(int(labels.max()) + 1)) if classes is None else [int(c) for c in classes]
    label_map = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int64)
    label_map[classes] = np.arange(len(classes))
    keep = [np.flatnonzero(labels == c) for c in classes]
    if per_class is not None:
        rng = np.random.default_rng(seed)
        for c, found in zip(classes, keep, strict=True):
            if len(found) < per_class:
                raise DataError(
                    f"split {split!r} has {len(found)} examples of class {c}, fewer than "
                    f"data.train_examples_per_class={per_class}"
                )
        keep = [rng.permutation(found)[:per_class] for found in keep]
    indices = np.sort(np.concatenate(keep))
    if isinstance(source, ArraySource):
        arrays = {k: np.asarray(v)[indices] for k, v in source.arrays.items()}
        arrays["label"] = label_map[arrays["label"]].astype(np.asarray(labels).dtype)
        return ArraySource(arrays)
    return SubsetSource(source, indices, label_map)
