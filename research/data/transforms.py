"""Per-record transforms: stored TFDS features -> the model's inputs, in plain numpy.

A transform maps one record (a dict of numpy values) to another; the pipeline applies it to each
example before batching. They are built with functools.partial so grain can pickle them.
"""

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from research.errors import DataError


def make_transform(
    image_key: str = "image", label_key: str = "label"
) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
    """Return record -> {"image": float32 HxWxC in [0, 1], "label": int32} for classification.

    uint8 images are divided by 255, float images pass through as float32, and 2-D HxW images
    get a trailing channel axis, so every model sees the same layout.
    """
    return functools.partial(_image_label, image_key=image_key, label_key=label_key)


def _image_label(record: dict[str, Any], *, image_key: str, label_key: str) -> dict[str, Any]:
    """Apply `make_transform`'s mapping to one record."""
    missing = [key for key in (image_key, label_key) if key not in record]
    if missing:
        raise DataError(
            f"record has no feature {missing[0]!r} (features: {', '.join(record)}); "
            "set the image/label keys of the transform to existing features"
        )
    return {"image": to_float_image(record[image_key]), "label": np.int32(record[label_key])}


def to_float_image(image: Any) -> np.ndarray:
    """Return `image` as float32 HxWxC: uint8 scaled to [0, 1], floats passed through."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        # Divide by a float32 255 so the result stays float32 (no float64 round trip).
        image = image.astype(np.float32) / np.float32(255)
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32, copy=False)
    else:
        raise DataError(
            f"image dtype {image.dtype} is not supported; store images as uint8 or float"
        )
    return image[..., None] if image.ndim == 2 else image
