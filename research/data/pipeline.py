"""grain input pipelines: an endless shuffled training stream and one padded pass for eval.

Batches are built from index arrays: each step first computes the example indices of its batch,
then reads and transforms just those records. The order is therefore a function of (seed, step)
only, each process reads only its own slice, and the iterator state is just the step.
"""

import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from research.data.sources import ArraySource
from research.errors import DataError

Record = dict[str, Any]
Transform = Callable[[Record], Record]
Augment = Callable[[Record, np.random.Generator], Record]


def train_iterator(
    source: Sequence[Record],
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    transform: Transform | None = None,
    augment: Augment | None = None,
    num_threads: int | None = None,
    prefetch: int = 4,
    shuffle: bool = True,
) -> grain.DatasetIterator:
    """Return an endless iterator over this process's training batches (dicts of numpy arrays).

    The stream is `grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)`: shuffled
    with `seed`, reshuffled differently every epoch, repeated forever. Global batch k is stream
    elements [k*B, (k+1)*B); process p gets the p-th contiguous chunk of B / process_count of it,
    so the union over processes does not depend on the process count. `augment(record, rng)`
    runs after `transform` with a generator seeded by (seed, stream position), so augmented
    batches, too, depend only on (seed, step). `get_state()` is a
    JSON-serialisable dict; `set_state()` on a fresh iterator resumes exactly.
    `num_threads=None` picks 0 (synchronous) for an `ArraySource`, else min(4, cores) threads;
    `prefetch` is the number of batches read ahead when threads are used. `shuffle=False`
    reads the source in its own order, epoch after epoch (streams for truncated BPTT).
    """
    offset, size = _process_chunk(global_batch_size, process_index, process_count)
    stream = grain.MapDataset.range(_checked_len(source))
    stream = (stream.seed(seed).shuffle() if shuffle else stream).repeat(None)
    steps = grain.MapDataset.range(len(stream) // global_batch_size)
    batches = steps.map(
        functools.partial(
            _train_batch,
            stream=stream,
            global_batch_size=global_batch_size,
            offset=offset,
            size=size,
            source=source,
            transform=transform,
            augment=augment,
            seed=seed,
        )
    )
    return _iterate(batches, source, num_threads, prefetch)


def eval_batches(
    source: Sequence[Record],
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    transform: Transform | None = None,
    num_threads: int | None = None,
    prefetch: int = 4,
) -> Iterator[Record]:
    """Yield one ordered pass over `source`, padded so every process yields the same batches.

    Global batch k covers examples [k*B, (k+1)*B); process p gets its contiguous chunk. Positions
    past the end repeat example 0, and each batch has a float32 "mask" (1 real, 0 padding) so
    metrics can ignore the padding.
    """
    offset, size = _process_chunk(global_batch_size, process_index, process_count)
    num_examples = _checked_len(source)
    steps = grain.MapDataset.range(math.ceil(num_examples / global_batch_size))
    batches = steps.map(
        functools.partial(
            _eval_batch,
            global_batch_size=global_batch_size,
            offset=offset,
            size=size,
            num_examples=num_examples,
            source=source,
            transform=transform,
        )
    )
    return _iterate(batches, source, num_threads, prefetch)


def _process_chunk(global_batch_size: int, process_index: int, process_count: int) -> tuple:
    """Return (offset, size) of this process's contiguous chunk within each global batch."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    size = global_batch_size // process_count
    return process_index * size, size


def _checked_len(source: Sequence[Record]) -> int:
    """Return len(source), refusing an empty source (nothing to shuffle or evaluate)."""
    if not len(source):
        raise DataError("a data split is empty: check the data.*_split keys (and any slices)")
    return len(source)


def _train_batch(
    step: int, *, stream, global_batch_size, offset, size, source, transform, augment, seed
) -> Record:
    """Read this process's chunk of global training batch `step`."""
    first = step * global_batch_size + offset
    indices = np.fromiter((stream[i] for i in range(first, first + size)), np.int64, size)
    if augment is None:
        return _read_batch(source, indices, transform)
    records = _read_records(source, indices, transform)
    positions = range(first, first + size)
    records = [
        augment(r, np.random.default_rng([seed, p]))
        for r, p in zip(records, positions, strict=True)
    ]
    return _stack(records)


def _eval_batch(
    step: int, *, global_batch_size, offset, size, num_examples, source, transform
) -> Record:
    """Read this process's chunk of global eval batch `step`, padded with example 0 + mask."""
    positions = step * global_batch_size + offset + np.arange(size)
    valid = positions < num_examples
    batch = _read_batch(source, np.where(valid, positions, 0), transform)
    batch["mask"] = valid.astype(np.float32)
    return batch


def _read_batch(source: Sequence[Record], indices: np.ndarray, transform) -> Record:
    """Read, transform and stack the records at `indices` into one dict of arrays."""
    if isinstance(source, ArraySource) and transform is None:
        return source.take(indices)
    return _stack(_read_records(source, indices, transform))


def _read_records(source: Sequence[Record], indices: np.ndarray, transform) -> list[Record]:
    """The transformed records at `indices`."""
    if isinstance(source, ArraySource):
        records = source.__getitems__(indices)
    else:
        # Per-record reads: measured faster than ArrayRecord's __getitems__ for small records.
        records = [source[int(i)] for i in indices]
    if transform is not None:
        records = [transform(record) for record in records]
    return records


def _stack(records: list[Record]) -> Record:
    return {key: np.stack([record[key] for record in records]) for key in records[0]}


def _iterate(
    batches: grain.MapDataset, source: Sequence[Record], num_threads: int | None, prefetch: int
) -> grain.DatasetIterator:
    """Iterate `batches`, reading ahead in threads unless the data is already in memory."""
    if num_threads is None:
        # In-memory reads are ~free and threads would only contend for the GIL (grain's advice);
        # file reads overlap in a few threads, more than the cores only adds contention.
        num_threads = 0 if isinstance(source, ArraySource) else min(4, os.cpu_count() or 1)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(options))
