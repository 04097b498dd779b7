"""Offline TFDS builder for scikit-learn's bundled 8x8 handwritten digits (no download needed).

The images ship inside scikit-learn, so this dataset can be prepared on any machine without
network. Pixels (0..16) are scaled by 16 to uint8 0..255 so they look like mnist-style images.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders.offline import OfflineBuilder

_DESCRIPTION = """\
The UCI optical recognition of handwritten digits data as bundled with scikit-learn
(`sklearn.datasets.load_digits`): 1797 grayscale 8x8 images of the digits 0-9. Pixel values are
the original 0..16 counts multiplied by 16 and clipped to 255. Splits are a fixed stratified
70/10/20 train/validation/test partition (scikit-learn `train_test_split`, random_state=0).
"""

_CITATION = """\
@misc{alpaydin1998digits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}
"""

# Fractions of the whole dataset; fixed so every machine builds the same splits.
_TEST_FRACTION = 0.2
_VALIDATION_FRACTION = 0.1
_RANDOM_STATE = 0


def split_indices() -> dict[str, np.ndarray]:
    """Return the fixed, stratified example indices of each split into `load_digits()`."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (1 s of imports: only when building)
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    labels = load_digits().target
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=_TEST_FRACTION, stratify=labels, random_state=_RANDOM_STATE
    )
    # The validation fraction is of the whole dataset, so rescale it to the remaining part.
    train, validation = train_test_split(
        rest,
        test_size=_VALIDATION_FRACTION / (1 - _TEST_FRACTION),
        stratify=labels[rest],
        random_state=_RANDOM_STATE,
    )
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


class Digits(OfflineBuilder):
    """scikit-learn's 8x8 digits as a TFDS dataset; defining this class registers "digits"."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data ships with scikit-learn; nothing to download.
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray):
        from sklearn.datasets import load_digits  # noqa: PLC0415 (only when building)

        digits = load_digits()
        images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
        for i in indices:
            # The index into load_digits() is a stable, unique key across machines.
            yield int(i), {"image": images[i], "label": int(digits.target[i])}
