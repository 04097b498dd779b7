"""`PreparedData`: what data preparation hands a run, typed.

Every run's data comes as sources by split prefix plus what the task, the model and the
reports need to know of it: the class count, the vocabulary of tokenized text, the shape of a
forecast's targets, and for a series its periods and its training period's values (the reports
test their stationarity; nothing in preparation analyses the data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from research.data.sources import ArraySource
from research.data.text import Vocabulary


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Sources by split prefix (train/eval/test) and what is known of the data beyond them."""

    sources: dict[str, Any]
    num_classes: int | None
    # Token data: ids are below this (a text's vocabulary size, or the largest stored id + 1).
    vocab_size: int | None = None
    vocabulary: Vocabulary | None = None  # tokenized text: written to the workdir as vocab.json
    output_shape: tuple[int, ...] | None = None  # forecast windows: (horizon, target columns)
    log_levels: bool = False  # forecast windows are cut from log(values) (data.series.log)
    # A series: [start, end) of its train / eval / test periods (a CV fold's train and eval).
    periods: Mapping[str, tuple[int, int]] | None = None
    # A series: the training period's target columns [n, C], gaps filled, in original units.
    train_values: np.ndarray | None = None


def stored_vocab_size(sources: Mapping[str, Any]) -> int | None:
    """The vocabulary size of a dataset stored as token ids ("inputs"/"targets" ints): the
    largest id + 1; None for any other dataset."""
    train = sources["train"]
    arrays = train.arrays if isinstance(train, ArraySource) else None
    if arrays is None or "inputs" not in arrays or arrays["inputs"].dtype.kind not in "iu":
        return None
    return max(int(arrays[k].max()) for k in ("inputs", "targets") if k in arrays) + 1
