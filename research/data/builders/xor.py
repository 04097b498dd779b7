"""Offline TFDS builder for the XOR problem: the four points of {0,1}^2, labelled x1 XOR x2.

XOR is the classic problem no linear model solves and a 2-2-1 network does. There is nothing
to sample or hold out, so every split holds the same four points: training, validation and test
all ask whether the network has learnt the whole truth table.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders.offline import GENERATED, OfflineBuilder

_DESCRIPTION = """\
The XOR truth table as a dataset: `image` is the float32 pair (x1, x2) in {0, 1}^2 and `label`
is x1 XOR x2. The train, validation and test splits each hold the same four examples.
"""

_CITATION = """\
@book{minsky1969perceptrons,
  author = {Minsky, Marvin and Papert, Seymour},
  title = {Perceptrons: An Introduction to Computational Geometry},
  publisher = {MIT Press},
  year = {1969}
}
"""

SPLITS = ("train", "validation", "test")


def truth_table() -> tuple[np.ndarray, np.ndarray]:
    """The four inputs (float32, shape (4, 2)) and their XOR labels (int64, shape (4,))."""
    inputs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    labels = np.logical_xor(inputs[:, 0], inputs[:, 1]).astype(np.int64)
    return inputs, labels


class Xor(OfflineBuilder):
    """The XOR truth table as a TFDS dataset; defining this class registers "xor"."""

    ORIGIN = GENERATED
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    # Named "image" so classification tasks and transforms read it unchanged.
                    "image": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://en.wikipedia.org/wiki/Exclusive_or",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated data; nothing to download.
        return {split: self._generate_examples() for split in SPLITS}

    def _generate_examples(self):
        inputs, labels = truth_table()
        for i, (x, y) in enumerate(zip(inputs, labels, strict=True)):
            # The row of the truth table is a stable, unique key.
            yield i, {"image": x, "label": int(y)}
