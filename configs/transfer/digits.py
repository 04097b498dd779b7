"""Transfer learning offline: pretrain on digits 0-4, then transfer to 5-9 with k labels each.

The digits sit at random offsets on a 12x12 canvas (`digits_canvas`), and training shifts them
further (pad-and-crop by 2 pixels), so a useful feature extractor must be translation-tolerant:
what a network pretrained on other classes can supply and 10 examples per class cannot. The
source and target share no class; the head is replaced (5 new classes).

Commands:
    python launch/train.py --config=configs/transfer/digits.py:pretrain \\
        --workdir=runs/transfer_digits/pretrain
    python launch/sweep.py --config=configs/transfer/digits.py \\
        --workdir=runs/transfer_digits/sweep --backend=local --parallel=2
    python launch/report.py runs/transfer_digits/sweep --curves=transfer.strategy --target=0.9 \\
        --metric=test/accuracy
One target run: python launch/train.py --config=configs/transfer/digits.py \\
    --workdir=runs/t --config.transfer.strategy=finetune --config.data.train_examples_per_class=10

`get_sweep()`: strategy (scratch, linear_probe, finetune, partial, progressive, llrd, l2sp, ewc)
x k in (5, 10, 20) labels per class x seeds 0-4 (the seed also draws the k-shot subset).

Expected result (measured with these commands; the README has the whole table): pretraining
reaches test accuracy 0.994 on digits 0-4 (395 steps). At k=10, mean test accuracy over seeds
0-4: scratch 0.730, linear_probe 0.693, finetune 0.874, partial 0.782, progressive 0.754,
llrd 0.854, l2sp 0.851, ewc 0.844; the source task's accuracy with the transferred backbone is
0.843 after fine-tuning and 0.94-0.96 with ewc / llrd / partial (0.994 for the probe).
"""

import ml_collections

from research import sweep
from research.config import TRANSFER_STRATEGIES, base_config

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
STRATEGIES = tuple(s for s in TRANSFER_STRATEGIES if s != "none")  # scratch ... ewc
SHOTS = (5, 10, 20)
SEEDS = (0, 1, 2, 3, 4)
PRETRAINED = "runs/transfer_digits/pretrain"


def _common() -> ml_collections.ConfigDict:
    c = base_config()
    c.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "stage_features": (32, 64),
            "blocks_per_stage": 2,
            "dense_features": 256,
            "dropout_rate": 0.25,
            "head_dropout_rate": 0.5,
            "batch_norm": True,
            "dtype": "float32",
        }
    )
    c.data.name = "digits_canvas"
    c.data.augment.crop_padding = 2
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.checkpoint.best_metric = "eval/accuracy"
    c.tracking.progress = False
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`pretrain`: the source model on classes 0-4; default: a transfer run on classes 5-9."""
    c = _common()
    if arg == "pretrain":
        c.data.classes = SOURCE_CLASSES
        c.batch_size = 64
        c.total_epochs = 40.0
        c.eval_every_steps = 100
        c.log_every_steps = 50
        c.optimizer.learning_rate = 2e-3
        c.optimizer.warmup_steps = 50
        c.checkpoint.every_steps = 200
        return c
    c.data.classes = TARGET_CLASSES
    c.data.train_examples_per_class = 10
    c.batch_size = 25
    c.total_steps = 150  # a short budget: how fast each strategy gets there is part of the result
    c.eval_every_steps = 10
    c.log_every_steps = 10
    c.checkpoint.every_steps = 150
    c.checkpoint.keep = 1
    c.init_from = PRETRAINED
    c.transfer.strategy = "finetune"
    c.transfer.blocks = 2  # partial: stage2's two conv blocks (and fc, head) train
    c.transfer.unfreeze_every_steps = 50  # progressive: fc first, then one conv block per 50
    c.transfer.layer_decay = 0.5  # llrd
    c.transfer.weight = 0.01  # l2sp / ewc (the sweep sets each strategy's own, below)
    c.transfer.cache_features = False  # the crop augmentation needs the backbone every step
    return c


# A linear probe trains one fresh layer on fixed features: it wants a larger learning rate and
# no dropout on its input (the usual probe protocol). The penalty weights are the largest whose
# validation accuracy (k=10, seeds 0-1) stays within 2 points of fine-tuning's: l2sp from
# {0.01, 0.1, 1, 10} (1 already loses 9 points), ewc from {1e2, ..., 1e6} (the Fisher of a
# well-fitted source model is small, so its useful weights are large). The layer decay is the
# best on validation: with 8 depth levels, 0.5 leaves the first conv at 0.5^7 of the rate.
PER_STRATEGY = {
    "linear_probe": {"optimizer.learning_rate": 1e-2, "model.head_dropout_rate": 0.0},
    "l2sp": {"transfer.weight": 0.1},
    "ewc": {"transfer.weight": 1e6},
    "llrd": {"transfer.layer_decay": 0.9},  # best of {0.5, 0.7, 0.9} on validation
}


def get_sweep(arg: str | None = None) -> list[dict]:
    """strategy x shots x seed; the seed also picks the k-shot subset."""
    strategies = [{"transfer.strategy": s, **PER_STRATEGY.get(s, {})} for s in STRATEGIES]
    seeds = sweep.zip_({"seed": list(SEEDS), "data.subset_seed": list(SEEDS)})
    shots = sweep.product({"data.train_examples_per_class": list(SHOTS)})
    return sweep.combine(strategies, shots, seeds)
