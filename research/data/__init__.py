"""Data: TFDS sources (public and offline builders), grain pipelines and per-record transforms.

Importing this package registers our offline TFDS builders (research/data/builders) with TFDS.
"""

from research.data import builders as _builders  # noqa: F401  (registers the offline builders)
from research.data.images import make_augment, make_image_transform
from research.data.pipeline import eval_batches, train_iterator
from research.data.sources import (
    OFFLINE_BUILDERS,
    ArraySource,
    DatasetInfo,
    dataset_info,
    open_source,
    resolve_data_dir,
)
from research.data.subsets import select
from research.data.transforms import make_transform

__all__ = [
    "OFFLINE_BUILDERS",
    "ArraySource",
    "DatasetInfo",
    "dataset_info",
    "eval_batches",
    "make_augment",
    "make_image_transform",
    "make_transform",
    "open_source",
    "resolve_data_dir",
    "select",
    "train_iterator",
]
