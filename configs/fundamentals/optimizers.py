"""Every optimizer of the training-fundamentals material on one MLP and one initialisation.

An MLP (64-256-128-10, ReLU) on the bundled digits, the same seed (so the same initial weights
and batches) for every run, a constant learning rate typical for each optimizer, 20 epochs.
`get_sweep()` lists one run per optimizer.

Command (one run per optimizer; the sweep launcher runs every entry of get_sweep()):
    python launch/train.py --config=configs/fundamentals/optimizers.py:sgd \\
        --workdir=runs/optimizers/sgd

Expected result (2-core CPU, seed 0, 5-8 s per run): test/accuracy and final train/loss
after 20 epochs
    sgd 0.967 / 0.137, momentum 0.964 / 0.017, nesterov 0.969 / 0.019, adam 0.975 / 0.036,
    adamw 0.975 / 0.036, rmsprop 0.964 / 0.054, adagrad 0.972 / 0.102, adadelta 0.961 / 0.068.
Each run's plots/learning_curves.png shows its training and validation curves.
"""

import ml_collections

from research.config import base_config

# A learning rate each optimizer is usually run with (Keras defaults for the adaptive ones).
LEARNING_RATES = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
    "adagrad": 0.05,
    "adadelta": 1.0,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` names the optimizer (default adam)."""
    name = arg or "adam"
    c = base_config()
    c.seed = 0
    c.batch_size = 64
    c.total_epochs = 20.0
    c.log_every_steps = 10
    c.eval_every_steps = 40
    c.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (256, 128), "dropout_rate": 0.0, "dtype": "float32"}
    )
    c.optimizer.name = name
    c.optimizer.learning_rate = LEARNING_RATES[name]
    c.optimizer.weight_decay = 1e-4 if name == "adamw" else 0.0
    c.optimizer.eps = 1e-7  # the material's (Keras) epsilon
    c.optimizer.schedule = "constant"
    c.checkpoint.every_steps = 200
    c.checkpoint.best_metric = ""
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """One run per optimizer, each with its usual learning rate; same seed and data order."""
    return [
        {
            "optimizer.name": name,
            "optimizer.learning_rate": lr,
            "optimizer.weight_decay": 1e-4 if name == "adamw" else 0.0,
        }
        for name, lr in LEARNING_RATES.items()
    ]


def get_search_space(arg: str | None = None) -> dict[str, tuple]:
    """For `launch/sweep.py --search=optuna`: the optimizer and its learning rate."""
    return {
        "optimizer.name": ("categorical", ["sgd", "momentum", "adam", "rmsprop"]),
        "optimizer.learning_rate": ("float", 1e-4, 0.3, "log"),
    }
