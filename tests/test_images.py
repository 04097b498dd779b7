"""Image data: class subsets and k-shot sets, augmentation, resizing, folders, digits_canvas."""

import numpy as np
import pytest
from PIL import Image

from research import data
from research.data import images
from research.data.builders.digits_canvas import place
from research.data.subsets import select
from research.errors import DataError


def _source(n_per_class=6, classes=4):
    labels = np.repeat(np.arange(classes), n_per_class)
    image = np.arange(len(labels), dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1))
    return data.ArraySource({"image": image.astype(np.float32), "label": labels})


def test_select_relabels_classes_and_nests_k_shot_sets():
    source = _source()
    subset = select(source, classes=(3, 1))
    labels = subset.arrays["label"]
    # Class 3 becomes 0, class 1 becomes 1; examples keep their images.
    assert sorted(set(labels.tolist())) == [0, 1] and len(labels) == 12
    original = (subset.arrays["image"][:, 0, 0, 0] // 6).astype(int)
    assert np.array_equal(np.where(labels == 0, 3, 1), original)
    five = select(source, classes=(3, 1), per_class=5, seed=7)
    two = select(source, classes=(3, 1), per_class=2, seed=7)
    ids = [set(s.arrays["image"][:, 0, 0, 0].tolist()) for s in (two, five)]
    assert ids[0] < ids[1] and len(ids[1]) == 10
    assert np.bincount(five.arrays["label"]).tolist() == [5, 5]
    with pytest.raises(DataError, match="fewer than"):
        select(source, classes=(0,), per_class=7)


def test_select_on_a_record_source_matches_the_array_path():
    source = _source()
    records = [source[i] for i in range(len(source))]
    lazy = select(records, classes=(2, 0), per_class=3, seed=1)
    eager = select(source, classes=(2, 0), per_class=3, seed=1)
    assert len(lazy) == len(eager)
    for i in range(len(lazy)):
        assert lazy[i]["label"] == eager[i]["label"]
        assert np.array_equal(lazy[i]["image"], eager[i]["image"])


def test_pad_and_crop_is_a_shift_and_flip_mirrors():
    image = np.random.default_rng(0).random((6, 6, 1)).astype(np.float32)
    rng = np.random.default_rng(3)
    shifted = images.pad_and_crop(image, rng, 2)
    # Some shift (dy, dx) in [-2, 2]^2 maps the image onto the crop exactly where both overlap.
    matches = [
        (dy, dx)
        for dy in range(-2, 3)
        for dx in range(-2, 3)
        if np.array_equal(
            np.roll(np.pad(image, ((2, 2), (2, 2), (0, 0))), (dy, dx), (0, 1))[2:8, 2:8], shifted
        )
    ]
    assert len(matches) == 1
    flip = images.make_augment(flip=True)
    flipped = [flip({"image": image}, np.random.default_rng(s))["image"] for s in range(20)]
    assert any(np.array_equal(f, image[:, ::-1]) for f in flipped)
    assert any(np.array_equal(f, image) for f in flipped)
    assert images.make_augment() is None


def test_augmented_stream_depends_only_on_seed_and_step():
    source = _source(n_per_class=8)
    augment = images.make_augment(crop_padding=1, flip=True, min_scale=0.5)

    def batches(process_count):
        iters = [
            data.train_iterator(
                source,
                global_batch_size=8,
                seed=5,
                process_index=p,
                process_count=process_count,
                transform=lambda r: dict(r),
                augment=augment,
            )
            for p in range(process_count)
        ]
        return [np.concatenate([next(it)["image"] for it in iters]) for _ in range(3)]

    one, two = batches(1), batches(2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    again = batches(1)
    np.testing.assert_array_equal(one[2], again[2])
    assert not np.array_equal(one[0], _plain_first_batch(source))


def _plain_first_batch(source):
    it = data.train_iterator(source, global_batch_size=8, seed=5, transform=lambda r: dict(r))
    return next(it)["image"]


def test_resize_and_random_resized_crop_keep_the_shape():
    image = np.random.default_rng(0).random((10, 7, 3)).astype(np.float32)
    assert images.resize(image, 5).shape == (5, 5, 3)
    constant = np.full((9, 9, 3), 0.25, np.float32)
    np.testing.assert_allclose(images.resize(constant, 4), 0.25, atol=1e-6)
    crop = images.random_resized_crop(image, np.random.default_rng(1), 0.3)
    assert crop.shape == image.shape and crop.dtype == np.float32
    transform = images.make_image_transform(
        lambda r: {"image": r["image"], "label": r["label"]},
        image_size=4,
        preprocess=lambda x: x / 255.0 - 0.5,
    )
    out = transform({"image": constant, "label": 1})
    np.testing.assert_allclose(out["image"], 0.25 - 0.5, atol=1e-6)
    assert out["image"].shape == (4, 4, 3)


def test_folder_dataset_reads_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (5 + i, 6, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    name = f"folder:{tmp_path}"
    info = data.dataset_info(name)
    assert info.splits == {"test": 4, "train": 6} and info.num_classes == 2
    source = data.open_source(name, "train")
    labels = [int(source[i]["label"]) for i in range(len(source))]
    assert labels == [0, 0, 0, 1, 1, 1]
    stored = np.asarray(Image.open(tmp_path / "train" / "dog" / "2.png"))
    assert np.array_equal(source[5]["image"], stored)
    with pytest.raises(DataError, match="no split"):
        data.open_source(name, "validation")
    with pytest.raises(DataError, match="not a directory"):
        data.dataset_info(f"folder:{tmp_path / 'missing'}")


def test_digits_canvas_places_each_digit_whole():
    digit = np.arange(64, dtype=np.uint8).reshape(8, 8, 1) + 1
    canvas = place(digit, 11)
    assert canvas.shape == (12, 12, 1) and canvas.sum() == digit.sum()
    rows, cols = np.nonzero(canvas[..., 0])
    assert np.array_equal(canvas[rows.min() : rows.min() + 8, cols.min() : cols.min() + 8], digit)
    offsets = {tuple(np.argwhere(place(digit, i)[..., 0])[0]) for i in range(50)}
    assert len(offsets) > 10  # offsets vary between examples
    np.testing.assert_array_equal(place(digit, 11), canvas)  # and are fixed per example
