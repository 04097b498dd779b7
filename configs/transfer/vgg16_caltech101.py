"""The transfer-learning tutorial's study: Keras VGG16 (ImageNet) on Caltech-101, five strategies.

Needs, on the training machine (no download happens at run time):
  * TFDS caltech101 prepared as ArrayRecord: on a machine with network
        tfds build caltech101 --file_format=array_record --data_dir=DIR
    then copy DIR and pass --config.data.data_dir=DIR (or set $TFDS_DATA_DIR);
  * the Keras VGG16 ImageNet weights (vgg16_weights_tf_dim_ordering_tf_kernels.h5, from the
    keras-applications release page or ~/.keras/models after keras.applications.VGG16()),
    ported once:
        python launch/port.py --source=keras --arch=vgg16 \\
            --weights=vgg16_weights_tf_dim_ordering_tf_kernels.h5 --output=runs/ports/vgg16_keras

Commands:
    python launch/sweep.py --config=configs/transfer/vgg16_caltech101.py \\
        --workdir=runs/vgg16_caltech101 --backend=local --devices=0,1,2,3
    python launch/report.py runs/vgg16_caltech101 --curves=transfer.strategy --target=0.8 \\
        --metric=test/accuracy
One run: python launch/train.py --config=configs/transfer/vgg16_caltech101.py \\
    --workdir=runs/vgg16_lp --config.transfer.strategy=linear_probe

The sweep is scratch (VGG16 from random weights, the from-scratch baseline), linear_probe
(feature extraction: frozen VGG16, fc7 features cached once, a new 102-way head), finetune,
progressive (head and fc layers first, then one conv block more every 2 epochs) and llrd
(layer-wise decay 0.7), 3 seeds each. Images are resized to 224x224 and preprocessed as Keras
does for VGG16 (BGR, ImageNet mean subtracted); training adds flips and random-resized crops.

Expected result: not measured by this project (its build machines cannot fetch caltech101 or
the ImageNet weights; the code path runs in the tests on tfds.testing.mock_data with generated
weights). The tutorial's figures for this setup are roughly 0.5 test accuracy from scratch and
0.85-0.90 for feature extraction and fine-tuning; the report table and the accuracy-vs-time
curves of the sweep are the result to read.
"""

import ml_collections

from research import sweep
from research.config import base_config

PORTED = "runs/ports/vgg16_keras"
STRATEGIES = ("scratch", "linear_probe", "finetune", "progressive", "llrd")
SEEDS = (0, 1, 2)
# Feature extraction trains one layer on cached features, without augmentation.
PER_STRATEGY = {
    "linear_probe": {
        "optimizer.learning_rate": 1e-3,
        "data.augment.flip": False,
        "data.augment.min_scale": 1.0,
    },
    "scratch": {"optimizer.learning_rate": 1e-4},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """One run; `transfer.strategy` and `seed` are what the sweep changes."""
    c = base_config()
    c.model = ml_collections.ConfigDict(
        # The Keras layout: no adaptive pooling before fc6 (identical at 224x224 inputs);
        # classifier "gap" for weights ported from a _notop file (no fc6/fc7).
        {"name": "vgg16", "adaptive_pool": None, "classifier": "fc", "dtype": "bfloat16"}
    )
    c.data.name = "caltech101"
    c.data.in_memory = False  # images of varying size: read and resized per batch
    # TFDS caltech101 has train (3060) and test (6084); part of test is the validation split.
    c.data.train_split = "train"
    c.data.eval_split = "test[:1000]"
    c.data.test_split = "test[1000:]"
    c.data.image_size = 224
    c.data.preprocess = "keras:vgg16"
    c.data.augment.flip = True
    c.data.augment.min_scale = 0.5
    c.batch_size = 32
    c.total_epochs = 15.0
    c.log_every_steps = 20
    c.eval_every_epochs = 1.0
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-5  # fine-tuning pretrained weights: small steps
    c.optimizer.warmup_steps = 50
    c.checkpoint.every_epochs = 1.0
    c.checkpoint.best_metric = "eval/accuracy"
    c.init_from = PORTED
    c.transfer.strategy = "finetune"
    c.transfer.unfreeze_every_epochs = 2.0
    c.transfer.layer_decay = 0.7
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """strategy x seed, with each strategy's learning rate."""
    strategies = [{"transfer.strategy": s, **PER_STRATEGY.get(s, {})} for s in STRATEGIES]
    return sweep.combine(strategies, sweep.product({"seed": list(SEEDS)}))
