"""The Caltech-101 VGG16 study's code path: Keras weights -> port -> transfer run on mock data."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mock_tfds import fake_prepared
from research import config as cfg
from research import port
from research.train import loop


@pytest.fixture(scope="module")
def ported_vgg16(tmp_path_factory):
    """Keras VGG16 without its top (random weights, 32x32 inputs), ported as documented."""
    import keras

    tmp = tmp_path_factory.mktemp("keras")
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()])
    path = tmp / "vgg16_notop.weights.h5"
    model.save_weights(path)
    output = tmp / "port"
    port.write_checkpoint("keras", "vgg16", path, output)
    return output


@pytest.mark.slow
def test_vgg16_caltech101_linear_probe_on_mock_data(tmp_path, ported_vgg16):
    data_dir = str(tmp_path / "tfds")
    fake_prepared("caltech101", data_dir, {"train": 24, "test": 24})
    recorded = json.loads((ported_vgg16 / "port.json").read_text())
    config = cfg.load_config_file("configs/transfer/vgg16_caltech101.py")
    overrides = {
        "data.data_dir": data_dir,
        "init_from": str(ported_vgg16),
        "transfer.strategy": "linear_probe",
        "data.image_size": 32,  # mock images have random sizes: resized like real ones
        "data.augment.flip": False,
        "data.augment.min_scale": 1.0,
        "data.eval_split": "test[:8]",
        "data.test_split": "test[8:]",
        "model.classifier": recorded["model"].get("classifier", "fc"),
        "model.dtype": "float32",
        "batch_size": 8,
        "total_epochs": None,
        "total_steps": 3,
        "eval_every_epochs": None,
        "optimizer.warmup_steps": 0,
        "checkpoint.every_epochs": None,
        "transfer.unfreeze_every_epochs": None,
        "tracking.progress": False,
    }
    cfg.apply_overrides(config, overrides)
    with tfds.testing.mock_data(
        num_examples=24, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir
    ):
        result = loop.train_and_evaluate(config, tmp_path / "run")
    assert result.status == loop.COMPLETED
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # mock_data serves num_examples for every split, slices included.
    assert sum(map(sum, summary["test/confusion_matrix"])) == 24
    assert len(summary["test/confusion_matrix"]) == 102
    rules = (tmp_path / "run" / "param_rules.txt").read_text()
    assert "head/kernel" in rules and "stage1" not in rules  # the cached probe trains the head only
