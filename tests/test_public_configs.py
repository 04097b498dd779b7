"""Public-dataset configs run end to end (a few real steps) on `tfds.testing.mock_data`."""

import json

import pytest
import tensorflow_datasets as tfds

from mock_tfds import fake_prepared
from research import config as cfg
from research.errors import ConfigError
from research.train import loop

SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_cnn_public_config_trains_on_mock_data(tmp_path, name):
    data_dir = str(tmp_path / "tfds")
    fake_prepared(name, data_dir, {"train": 80, "test": 80})  # mock_data serves 80 per split
    config = cfg.load_config_file("configs/cnn_public.py", name)
    cfg.apply_overrides(
        config,
        {
            "data.data_dir": data_dir,
            "batch_size": 16,
            "total_epochs": None,
            "total_steps": 3,
            "eval_every_epochs": None,
            "optimizer.warmup_epochs": None,
            "checkpoint.every_epochs": None,
            "model.stage_features": (4, 8),
            "model.dense_features": 8,
            "tracking.progress": False,
        },
    )
    with tfds.testing.mock_data(
        num_examples=80, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir
    ):
        result = loop.train_and_evaluate(config, tmp_path / "run")
    assert result.status == loop.COMPLETED
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sum(map(sum, summary["test/confusion_matrix"])) == 80
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["data"]["name"] == name and resolved["data"]["eval_split"] == "train[90%:]"


def test_unknown_public_dataset_arg_is_refused():
    with pytest.raises(ConfigError, match="choose one of"):
        cfg.load_config_file("configs/cnn_public.py", "imagenet")
