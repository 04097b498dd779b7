"""Smoke test: a tiny MLP on digits for 60 steps; checks that the whole pipeline works.

Used by the test suite (resume, bad input) and handy after an installation.

Command:
    python launch/train.py --config=configs/smoke.py --workdir=/tmp/smoke

Expected result: test/accuracy around 0.8 in summary.json, under 15 s on a 2-core CPU.
"""

import ml_collections

from research.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """A run small enough to start, stop and resume several times in a test."""
    c = base_config()
    c.batch_size = 32
    c.total_steps = 60
    c.log_every_steps = 1
    c.eval_every_steps = 20
    c.model = ml_collections.ConfigDict({"name": "mlp_tiny", "dropout_rate": 0.1})
    c.optimizer.learning_rate = 1e-2
    c.optimizer.warmup_steps = 5
    c.checkpoint.every_steps = 20
    c.checkpoint.async_save = True
    c.tracking.progress = False
    return c
