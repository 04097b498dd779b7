"""The baseline CNN on a public TFDS image dataset (arg: mnist, fashion_mnist or cifar10).

The dataset must be prepared in ArrayRecord format in the data dir (no download happens at run
time). On a machine with network:
    tfds build mnist --file_format=array_record --data_dir=DIR
then copy DIR over and pass `--config.data.data_dir=DIR` (or set $TFDS_DATA_DIR).

Command:
    python launch/train.py --config=configs/cnn_public.py:fashion_mnist --workdir=runs/fmnist

Expected result (not yet measured by this project: these datasets cannot be fetched on its
build machines; the code path is tested on `tfds.testing.mock_data`): the usual figures for
this architecture are about 0.99 test/accuracy on mnist and 0.92 on fashion_mnist after 15
epochs, and about 0.75 on cifar10 after 30 epochs (one GPU: minutes).
"""

import ml_collections

from research.config import base_config

EPOCHS = {"mnist": 15.0, "fashion_mnist": 15.0, "cifar10": 30.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` names the dataset; the last 10% of `train` is held out for validation."""
    name = arg or "mnist"
    if name not in EPOCHS:
        raise ValueError(f"configs/cnn_public.py:{name}: choose one of {', '.join(EPOCHS)}")
    c = base_config()
    c.batch_size = 128
    c.total_epochs = EPOCHS[name]
    c.log_every_steps = 100
    c.eval_every_epochs = 1.0
    c.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "stage_features": (32, 64),
            "blocks_per_stage": 2,
            "dense_features": 256,
            "dropout_rate": 0.25,
            "head_dropout_rate": 0.5,
            "batch_norm": name == "cifar10",
            "dtype": "float32",
        }
    )
    c.data.name = name
    c.data.train_split = "train[:90%]"
    c.data.eval_split = "train[90%:]"
    c.data.test_split = "test"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_epochs = 0.5
    c.checkpoint.every_epochs = 1.0
    return c
