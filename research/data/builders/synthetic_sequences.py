"""Offline TFDS builders for two synthetic long-memory benchmarks: adding and copy memory.

Both test whether a recurrent network can carry information across T steps; a model that
cannot stays at a known baseline (MSE 1/6 for adding, 10 ln(8) / (T + 20) nats per step for copy
memory). Each (task, split, T) draws from its own fixed numpy seed, so every machine builds
identical data; arrays are generated vectorised per split and then yielded per example.
"""

import dataclasses
import types
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders.offline import GENERATED, OfflineBuilder
from research.errors import ConfigError, DataError

SPLIT_SIZES: Mapping[str, int] = types.MappingProxyType(
    {"train": 20000, "validation": 2000, "test": 2000}
)

# Copy-memory alphabet: 0 is blank, 1..8 are the symbols to copy, 9 says "start copying now".
BLANK = 0
NUM_SYMBOLS = 8
DELIMITER = 9
VOCAB_SIZE = 10
COPY_LENGTH = 10  # symbols to remember

_ADDING_DESCRIPTION = """\
The adding problem (Hochreiter and Schmidhuber 1997, in the form of Le et al. 2015). `inputs`
(T, 2) float32: column 0 holds values drawn from U(0, 1); column 1 is a marker equal to 1 at
exactly two steps, one drawn uniformly from [0, T/2) and one from [T/2, T). `target` (float32) is
the sum of the two marked values. Predicting the constant 1.0 scores MSE 1/6. Splits: train
20000, validation 2000, test 2000, each from a fixed numpy seed per (split, T).
"""

_ADDING_CITATION = """\
@article{le2015irnn,
  author = {Le, Quoc V. and Jaitly, Navdeep and Hinton, Geoffrey E.},
  title = {A Simple Way to Initialize Recurrent Networks of Rectified Linear Units},
  journal = {arXiv preprint arXiv:1504.00941},
  year = {2015}
}
"""

_COPY_DESCRIPTION = """\
The copy-memory task (Hochreiter and Schmidhuber 1997; Arjovsky et al. 2016) with delay T.
Alphabet: 0 blank, 1..8 symbols, 9 delimiter. `inputs` (T + 20,) int32: 10 symbols drawn
uniformly from 1..8, T - 1 blanks, the delimiter, 10 blanks. `targets` (T + 20,) int32: T + 10
blanks, then the same 10 symbols. Predicting blanks and then uniform symbols scores a
cross-entropy of 10 ln(8) / (T + 20) per step. Splits: train 20000, validation 2000, test 2000,
each from a fixed numpy seed per (split, T).
"""

_COPY_CITATION = """\
@inproceedings{arjovsky2016unitary,
  author = {Arjovsky, Martin and Shah, Amar and Bengio, Yoshua},
  title = {Unitary Evolution Recurrent Neural Networks},
  booktitle = {International Conference on Machine Learning},
  year = {2016}
}
"""

# Seed = (task, split position in SPLIT_SIZES, T): the two tasks never share a stream.
_ADDING_SEED = 1
_COPY_SEED = 2


@dataclasses.dataclass(eq=False, kw_only=True)
class SequenceConfig(tfds.core.BuilderConfig):
    """A config naming the sequence length T (adding) or delay T (copy memory)."""

    length: int


def _configs(lengths: tuple[int, ...], what: str) -> list[SequenceConfig]:
    """One config "t<T>" per length."""
    return [SequenceConfig(name=f"t{t}", length=t, description=f"{what} T = {t}.") for t in lengths]


def split_rng(task_seed: int, split: str, length: int) -> np.random.Generator:
    """The fixed generator for one (task, split, T), the same on every machine."""
    if split not in SPLIT_SIZES:
        raise DataError(f"split {split!r} is unknown; use one of: {', '.join(SPLIT_SIZES)}")
    return np.random.default_rng([task_seed, list(SPLIT_SIZES).index(split), length])


def adding_arrays(length: int, num_examples: int, rng: np.random.Generator) -> dict:
    """`num_examples` adding-problem examples of `length` steps, as stacked arrays.

    "inputs" (n, T, 2) float32: values ~ U(0, 1) and a marker that is 1 at one step drawn from
    [0, T/2) and one from [T/2, T); "target" (n,) float32: the sum of the two marked values.
    """
    if length < 2:
        raise ConfigError(f"adding length T={length} is too short; use T >= 2")
    values = rng.uniform(size=(num_examples, length)).astype(np.float32)
    half = length // 2
    rows = np.arange(num_examples)
    first = rng.integers(0, half, size=num_examples)
    second = rng.integers(half, length, size=num_examples)
    marker = np.zeros_like(values)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return {"inputs": np.stack([values, marker], axis=-1), "target": target}


def copy_memory_arrays(delay: int, num_examples: int, rng: np.random.Generator) -> dict:
    """`num_examples` copy-memory examples with delay `delay`, as stacked int32 arrays.

    "inputs" (n, T + 20): 10 symbols from 1..8, T - 1 blanks, the delimiter, 10 blanks.
    "targets" (n, T + 20): T + 10 blanks, then the same 10 symbols.
    """
    if delay < 1:
        raise ConfigError(f"copy_memory delay T={delay} is too short; use T >= 1")
    total = delay + 2 * COPY_LENGTH
    symbols = rng.integers(1, NUM_SYMBOLS + 1, size=(num_examples, COPY_LENGTH), dtype=np.int32)
    inputs = np.full((num_examples, total), BLANK, np.int32)
    inputs[:, :COPY_LENGTH] = symbols
    inputs[:, COPY_LENGTH + delay - 1] = DELIMITER
    targets = np.full((num_examples, total), BLANK, np.int32)
    targets[:, -COPY_LENGTH:] = symbols
    return {"inputs": inputs, "targets": targets}


def adding_split(length: int, split: str) -> dict:
    """The rows of one split of "adding/t<length>" in draw order (TFDS stores them key-hashed)."""
    rng = split_rng(_ADDING_SEED, split, length)  # checks the split name first
    return adding_arrays(length, SPLIT_SIZES[split], rng)


def copy_memory_split(delay: int, split: str) -> dict:
    """The rows of one split of "copy_memory/t<delay>" in draw order (stored key-hashed)."""
    rng = split_rng(_COPY_SEED, split, delay)  # checks the split name first
    return copy_memory_arrays(delay, SPLIT_SIZES[split], rng)


def _yield_rows(arrays: dict):
    """Yield (position, example) for each row of equally long stacked arrays."""
    for i in range(len(next(iter(arrays.values())))):
        # The position in the split's draw is a stable, unique key.
        yield i, {key: value[i] for key, value in arrays.items()}


class Adding(OfflineBuilder):
    """The adding problem; defining this class registers "adding" (configs t50..t400)."""

    ORIGIN = GENERATED
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs((50, 100, 200, 400), "Sequence length")
    DEFAULT_BUILDER_CONFIG_NAME = "t100"

    def _info(self) -> tfds.core.DatasetInfo:
        length = self.builder_config.length
        return self.dataset_info_from_configs(
            description=_ADDING_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Tensor(shape=(length, 2), dtype=np.float32),
                    "target": tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=("inputs", "target"),
            homepage="https://arxiv.org/abs/1504.00941",
            citation=_ADDING_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated data; nothing to download.
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        yield from _yield_rows(adding_split(self.builder_config.length, split))


class CopyMemory(OfflineBuilder):
    """The copy-memory task; defining this class registers "copy_memory" (configs t50..t200)."""

    ORIGIN = GENERATED
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs((50, 100, 200), "Delay")
    DEFAULT_BUILDER_CONFIG_NAME = "t100"

    def _info(self) -> tfds.core.DatasetInfo:
        total = self.builder_config.length + 2 * COPY_LENGTH
        return self.dataset_info_from_configs(
            description=_COPY_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Tensor(shape=(total,), dtype=np.int32),
                    "targets": tfds.features.Tensor(shape=(total,), dtype=np.int32),
                }
            ),
            supervised_keys=("inputs", "targets"),
            homepage="https://arxiv.org/abs/1511.06464",
            citation=_COPY_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated data; nothing to download.
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        yield from _yield_rows(copy_memory_split(self.builder_config.length, split))
