"""Tests for research.data: offline builders (digits, xor), sources, errors, transforms, pipelines.

Public datasets are exercised through `tfds.testing.mock_data` over metadata-only prepared
directories, so the same dataset_info/open_source code path as real users runs without network.
"""

import json
import os

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from mock_tfds import fake_prepared
from research import data
from research.data.builders.digits import split_indices
from research.data.builders.xor import truth_table
from research.errors import DataError

DIGITS_SIZES = {"train": 1257, "validation": 180, "test": 360}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    """A data dir with digits built once for the whole module."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info("digits", data_dir)
    return data_dir


def _split_arrays(data_dir: str, split: str) -> dict[str, np.ndarray]:
    return dict(data.open_source("digits", split, data_dir, in_memory=True).arrays)


# --- digits builder ---------------------------------------------------------------------------


def test_digits_info(digits_dir):
    info = data.dataset_info("digits", digits_dir)
    assert info.splits == DIGITS_SIZES
    assert sum(info.splits.values()) == 1797
    assert info.num_classes == 10
    assert info.features == {"image": ((8, 8, 1), "uint8"), "label": ((), "int64")}


def test_digits_content_matches_sklearn_and_is_stratified(digits_dir):
    digits = load_digits()
    expected_images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    overall = np.bincount(digits.target, minlength=10) / len(digits.target)
    for split, indices in split_indices().items():
        arrays = _split_arrays(digits_dir, split)
        assert arrays["image"].dtype == np.uint8 and arrays["image"].shape[1:] == (8, 8, 1)
        # Same multiset of (image, label) as the fixed sklearn split (record order is TFDS's).
        got = sorted(im.tobytes() + bytes([lb]) for im, lb in zip(*arrays.values(), strict=True))
        want = sorted(expected_images[i].tobytes() + bytes([digits.target[i]]) for i in indices)
        assert got == want
        counts = np.bincount(arrays["label"], minlength=10)
        assert counts.min() > 0
        np.testing.assert_allclose(counts / counts.sum(), overall, atol=0.02)
    train = _split_arrays(digits_dir, "train")["image"]
    assert train.min() == 0 and train.max() == 255


def test_digits_build_is_deterministic(digits_dir, tmp_path):
    data.dataset_info("digits", str(tmp_path))
    for split in DIGITS_SIZES:
        first, second = _split_arrays(digits_dir, split), _split_arrays(str(tmp_path), split)
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])


def test_offline_builds_print_one_plain_line_not_the_tfds_banner(tmp_path, capfd):
    data.dataset_info("digits", str(tmp_path))
    out, err = capfd.readouterr()
    line = f"preparing the bundled digits dataset (offline, once) in {tmp_path}/digits/1.0.0\n"
    assert out == line
    assert "Downloading and preparing" not in err and "downloaded and prepared" not in err
    data.dataset_info("digits", str(tmp_path))  # prepared already: nothing at all
    data.dataset_info("adding/t50", str(tmp_path))  # with a config, and generated
    out, _ = capfd.readouterr()
    where = tmp_path / "adding" / "t50" / "1.0.0"
    assert out == f"preparing the generated adding/t50 dataset (offline, once) in {where}\n"


class _PublicLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that is not ours (like every public dataset's): two examples, no network."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"x": np.int64})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from ((i, {"x": i}) for i in range(2))


def test_public_builders_keep_the_tfds_banner(tmp_path, capfd):
    _PublicLike(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    out, _ = capfd.readouterr()
    assert "Downloading and preparing dataset" in out and "preparing the" not in out


def test_concurrent_builders_tolerate_losing_the_rename(tmp_path, monkeypatch):
    # Several processes on one host may build digits at once; the one whose final rename finds
    # the data already there must still succeed.
    real_prepare = data.builders.Digits.download_and_prepare

    def prepare_then_lose_race(self, **kwargs):
        real_prepare(self, **kwargs)
        raise FileExistsError("another process renamed its copy first")

    monkeypatch.setattr(data.builders.Digits, "download_and_prepare", prepare_then_lose_race)
    assert data.dataset_info("digits", str(tmp_path)).splits == DIGITS_SIZES


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir(None) == str(tmp_path)
    assert data.resolve_data_dir("~/x") == os.path.expanduser("~/x")
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


def test_open_source_split_slicing(digits_dir):
    assert len(data.open_source("digits", "train[:90%]", digits_dir)) == round(0.9 * 1257)
    assert len(data.open_source("digits", "train+validation", digits_dir)) == 1257 + 180


# --- xor builder ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xor_dir(tmp_path_factory) -> str:
    """A data dir with xor built once for the whole module."""
    data_dir = str(tmp_path_factory.mktemp("tfds_xor"))
    data.dataset_info("xor", data_dir)
    return data_dir


def test_xor_is_an_offline_builder_with_four_points_per_split(xor_dir):
    assert "xor" in data.OFFLINE_BUILDERS
    info = data.dataset_info("xor", xor_dir)
    assert info.splits == {"train": 4, "validation": 4, "test": 4}
    assert info.num_classes == 2
    assert info.features == {"image": ((2,), "float32"), "label": ((), "int64")}


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_xor_splits_hold_the_truth_table(xor_dir, split):
    arrays = data.open_source("xor", split, xor_dir, in_memory=True).arrays
    assert arrays["image"].dtype == np.float32
    rows = sorted((*map(float, x), int(y)) for x, y in zip(*arrays.values(), strict=True))
    assert rows == [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
    inputs, labels = truth_table()
    np.testing.assert_array_equal(labels, inputs[:, 0] != inputs[:, 1])


def test_xor_full_batch_is_the_whole_dataset_as_float_vectors(xor_dir):
    # A 1-D float feature passes the classification transform unchanged (no channel axis).
    source = data.open_source("xor", "train", xor_dir)
    transform = data.make_transform()
    record = transform(source[0])
    assert record["image"].shape == (2,) and record["image"].dtype == np.float32
    np.testing.assert_array_equal(record["image"], source[0]["image"])
    iterator = data.train_iterator(source, global_batch_size=4, seed=0, transform=transform)
    for batch in _take(iterator, 3):
        assert batch["image"].shape == (4, 2) and batch["image"].dtype == np.float32
        pairs = zip(map(tuple, batch["image"].tolist()), batch["label"].tolist(), strict=True)
        assert sorted(pairs) == [((0, 0), 0), ((0, 1), 1), ((1, 0), 1), ((1, 1), 0)]


# --- errors -----------------------------------------------------------------------------------


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'no_such_dataset'"):
        data.dataset_info("no_such_dataset", str(tmp_path))


def test_bad_version(digits_dir):
    with pytest.raises(DataError, match="digits.*9.9.9"):
        data.dataset_info("digits:9.9.9", digits_dir)


def test_public_dataset_not_prepared(tmp_path):
    with pytest.raises(DataError) as error:
        data.open_source("mnist", "train", str(tmp_path))
    message = str(error.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "tfds build mnist --file_format=array_record" in message
    assert "\n" not in message


def test_public_dataset_in_tfrecord_format(tmp_path):
    fake_prepared("mnist", str(tmp_path), {"train": 3}, file_format="tfrecord")
    with pytest.raises(DataError, match="--file_format=array_record"):
        data.dataset_info("mnist", str(tmp_path))


def test_bad_split(digits_dir):
    with pytest.raises(DataError, match="train, validation, test"):
        data.open_source("digits", "training", digits_dir)


# --- public datasets through tfds.testing.mock_data -------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))],
)
def test_public_dataset_flows_through_pipeline(tmp_path, name, shape):
    fake_prepared(name, str(tmp_path), {"train": 20, "test": 7})
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=20, policy=policy, data_dir=str(tmp_path)):
        info = data.dataset_info(name, str(tmp_path))
        source = data.open_source(name, "train", str(tmp_path))
        arrays = data.open_source(name, "train", str(tmp_path), in_memory=True).arrays
        transform = data.make_transform()
        batches = _take(
            data.train_iterator(source, global_batch_size=8, seed=0, transform=transform), 4
        )
    assert info.splits == {"train": 20, "test": 7} and info.num_classes == 10
    assert info.features["image"] == (shape, "uint8")
    assert len(source) == 20 and arrays["image"].shape == (20, *shape)
    batch = batches[-1]  # the last one crosses an epoch boundary
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, *shape) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and 0 <= batch["label"].min() < 10


# --- transforms and ArraySource ---------------------------------------------------------------


def test_make_transform():
    transform = data.make_transform()
    out = transform({"image": np.array([[0, 51], [255, 1]], np.uint8), "label": np.int64(7)})
    np.testing.assert_array_equal(out["image"][..., 0], np.array([[0, 0.2], [1, 1 / 255]], "f4"))
    assert out["image"].shape == (2, 2, 1) and out["image"].dtype == np.float32
    assert out["label"] == 7 and out["label"].dtype == np.int32
    floats = data.make_transform("x", "y")({"x": np.full((3, 3, 2), 0.5), "y": 1})
    assert floats["image"].dtype == np.float32 and floats["image"].shape == (3, 3, 2)
    with pytest.raises(DataError, match="'image'"):
        transform({"pixels": np.zeros((2, 2), np.uint8), "label": 0})


def test_array_source():
    source = data.ArraySource({"x": np.arange(10) * 2, "y": np.arange(10)[:, None]})
    assert len(source) == 10 and source[3] == {"x": 6, "y": np.array([3])}
    items = source.__getitems__([4, 1])
    assert [int(item["x"]) for item in items] == [8, 2]
    np.testing.assert_array_equal(source.take([4, 1])["y"], [[4], [1]])
    with pytest.raises(ValueError, match="equal-length"):
        data.ArraySource({"x": np.arange(3), "y": np.arange(4)})


# --- pipelines --------------------------------------------------------------------------------


def _index_source(n: int) -> data.ArraySource:
    """A source whose "index" feature tells which example was read."""
    return data.ArraySource({"index": np.arange(n), "label": np.arange(n) % 10})


def _take(iterator, steps: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(steps)]


def test_train_order_is_grain_shuffle_repeat():
    n, batch_size, steps = 37, 8, 12  # batches straddle epoch boundaries
    batches = _take(data.train_iterator(_index_source(n), global_batch_size=8, seed=5), steps)
    got = np.concatenate([b["index"] for b in batches])
    reference = grain.MapDataset.source(list(range(n))).seed(5).shuffle().repeat(None)
    np.testing.assert_array_equal(got, [reference[i] for i in range(batch_size * steps)])
    epochs = got[: 2 * n].reshape(2, n)
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    other_seed = _take(data.train_iterator(_index_source(n), global_batch_size=8, seed=6), 1)
    assert not np.array_equal(other_seed[0]["index"], batches[0]["index"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_train_union_over_processes_is_independent_of_process_count(process_count):
    source, steps = _index_source(50), 9
    single = _take(data.train_iterator(source, global_batch_size=16, seed=1), steps)
    per_process = [
        _take(
            data.train_iterator(
                source,
                global_batch_size=16,
                seed=1,
                process_index=p,
                process_count=process_count,
            ),
            steps,
        )
        for p in range(process_count)
    ]
    for step in range(steps):
        chunks = [batches[step]["index"] for batches in per_process]
        assert all(len(chunk) == 16 // process_count for chunk in chunks)
        np.testing.assert_array_equal(np.concatenate(chunks), single[step]["index"])


def test_train_batch_size_must_divide_by_process_count():
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        data.train_iterator(_index_source(10), global_batch_size=8, seed=0, process_count=3)


@pytest.mark.parametrize("in_memory", [True, False])
def test_train_state_round_trip(digits_dir, in_memory):
    source = data.open_source("digits", "train", digits_dir, in_memory=in_memory)
    kwargs = dict(global_batch_size=64, seed=3, transform=data.make_transform())
    iterator = data.train_iterator(source, **kwargs)
    _take(iterator, 25)  # past the first epoch (1257 examples)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 4)
    resumed = data.train_iterator(source, **kwargs)
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 4), strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_train_in_memory_and_tfds_source_agree(digits_dir):
    kwargs = dict(global_batch_size=32, seed=0, transform=data.make_transform())
    streams = [
        _take(data.train_iterator(data.open_source("digits", "test", digits_dir, **m), **kwargs), 3)
        for m in ({"in_memory": True}, {"in_memory": False})
    ]
    for a, b in zip(*streams, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_batches_cover_every_example_once(process_count):
    n, batch_size = 23, 6  # the last global batch holds 5 real examples and 1 pad
    per_process = [
        list(
            data.eval_batches(
                _index_source(n),
                global_batch_size=batch_size,
                process_index=p,
                process_count=process_count,
            )
        )
        for p in range(process_count)
    ]
    assert {len(batches) for batches in per_process} == {4}
    seen = []
    for step in range(4):
        for batches in per_process:
            batch = batches[step]
            assert batch["mask"].dtype == np.float32
            assert len(batch["index"]) == batch_size // process_count
            seen.extend(batch["index"][batch["mask"] == 1.0])
    assert seen == list(range(n))  # ordered, complete, no duplicates
    total_padding = sum(float((1 - b["mask"]).sum()) for bs in per_process for b in bs)
    assert total_padding == 4 * batch_size - n
