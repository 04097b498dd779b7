"""A two-hidden-layer MLP on the bundled digits: the fundamentals baseline (no convolutions).

Command:
    python launch/train.py --config=configs/mlp_digits.py --workdir=runs/mlp_digits

Expected result: test/accuracy 0.975 in summary.json (seed 0), ~10 s on a 2-core CPU.
"""

import ml_collections

from research.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """MLP 64-256-128-10 with dropout, Adam and warmup+cosine."""
    c = base_config()
    c.batch_size = 64
    c.total_epochs = 40.0
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (256, 128), "dropout_rate": 0.2, "dtype": "float32"}
    )
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 50
    c.checkpoint.every_steps = 200
    return c
