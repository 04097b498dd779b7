"""Image preparation around a task's transform: resizing, a ported model's preprocessing, and
training-time augmentation (random flips, pad-and-crop shifts, random-resized crops).

Augmentations take an explicit numpy Generator; the pipeline seeds it from (seed, position in
the training stream), so the augmented stream is a function of (seed, step) like the order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

Record = dict[str, Any]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """float32 HxWxC -> size x size x C, bilinear (each channel through PIL's float mode)."""
    if image.shape[:2] == (size, size):
        return image
    channels = [
        np.asarray(Image.fromarray(image[..., c]).resize((size, size), Image.BILINEAR))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def make_image_transform(
    base: Callable[[Record], Record],
    *,
    image_size: int | None = None,
    preprocess: Callable[[np.ndarray], Any] | None = None,
) -> Callable[[Record], Record]:
    """`base` (stored record -> {"image" in [0, 1], ...}), then resize and `preprocess`.

    `preprocess` receives 0-255 pixels, as ported models' preprocessing expects.
    """
    if image_size is None and preprocess is None:
        return base
    return functools.partial(_prepare, base=base, image_size=image_size, preprocess=preprocess)


def _prepare(record: Record, *, base, image_size, preprocess) -> Record:
    out = base(record)
    image = out["image"]
    if image_size is not None:
        image = resize(image, image_size)
    if preprocess is not None:
        image = np.asarray(preprocess(image * np.float32(255)), np.float32)
    return {**out, "image": image}


def make_augment(
    *, flip: bool = False, crop_padding: int = 0, min_scale: float = 1.0
) -> Callable[[Record, np.random.Generator], Record] | None:
    """`(record, rng) -> record` with the configured augmentations, or None when all are off."""
    if not (flip or crop_padding or min_scale < 1.0):
        return None
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    return functools.partial(
        _augment, flip=flip, crop_padding=int(crop_padding), min_scale=float(min_scale)
    )


def _augment(
    record: Record, rng: np.random.Generator, *, flip: bool, crop_padding: int, min_scale: float
) -> Record:
    image = record["image"]
    if min_scale < 1.0:
        image = random_resized_crop(image, rng, min_scale)
    if crop_padding:
        image = pad_and_crop(image, rng, crop_padding)
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    return {**record, "image": np.ascontiguousarray(image)}


def pad_and_crop(image: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """Zero-pad by `padding` on every side and crop back at a random offset (a random shift)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + h, left : left + w]


def random_resized_crop(
    image: np.ndarray, rng: np.random.Generator, min_scale: float
) -> np.ndarray:
    """A square crop covering a random fraction in [min_scale, 1] of the area, resized back."""
    h, w = image.shape[:2]
    side = max(1, round(min(h, w) * np.sqrt(rng.uniform(min_scale, 1.0))))
    top = rng.integers(0, h - side + 1)
    left = rng.integers(0, w - side + 1)
    crop = image[top : top + side, left : left + side]
    if (h, w) == (side, side):
        return crop
    channels = [
        np.asarray(Image.fromarray(crop[..., c]).resize((w, h), Image.BILINEAR))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)
