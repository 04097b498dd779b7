"""Offline TFDS builder: the bundled 8x8 digits, each placed at a random offset on a 12x12 canvas.

On the raw 8x8 digits a small CNN trained from scratch on 10 labels per class already reaches
about 95%, so transfer learning has nothing to add there. Translating every digit by a random
offset makes the task need translation-invariant features, which a network pretrained on other
classes can supply: this is the offline stand-in for the Caltech-101 transfer study. Splits and
labels are those of "digits"; the offset of example i is drawn from a generator seeded by i.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders.digits import split_indices
from research.data.builders.offline import OfflineBuilder

CANVAS = 12
_DIGIT = 8


def place(image: np.ndarray, index: int) -> np.ndarray:
    """`image` (8x8x1 uint8) on a zero 12x12 canvas at an offset drawn from seed `index`."""
    rng = np.random.default_rng(index)
    top, left = rng.integers(0, CANVAS - _DIGIT + 1, size=2)
    canvas = np.zeros((CANVAS, CANVAS, 1), np.uint8)
    canvas[top : top + _DIGIT, left : left + _DIGIT] = image
    return canvas


class DigitsCanvas(OfflineBuilder):
    """scikit-learn's digits at random offsets on 12x12; defining it registers "digits_canvas"."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data ships with scikit-learn; nothing to download.
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray):
        from sklearn.datasets import load_digits  # noqa: PLC0415 (only when building)

        digits = load_digits()
        images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
        for i in indices:
            yield int(i), {"image": place(images[i], int(i)), "label": int(digits.target[i])}
