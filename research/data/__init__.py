"""Data: TFDS sources (public and offline builders), grain pipelines and per-record transforms.

Importing this package registers our offline TFDS builders (e.g. "digits") with TFDS.
"""

from research.data.builders import digits as _digits  # noqa: F401  (registers the builder)
from research.data.pipeline import eval_batches, train_iterator
from research.data.sources import (
    OFFLINE_BUILDERS,
    ArraySource,
    DatasetInfo,
    dataset_info,
    open_source,
    resolve_data_dir,
)
from research.data.transforms import make_transform

__all__ = [
    "OFFLINE_BUILDERS",
    "ArraySource",
    "DatasetInfo",
    "dataset_info",
    "eval_batches",
    "make_transform",
    "open_source",
    "resolve_data_dir",
    "train_iterator",
]
