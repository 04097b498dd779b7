"""The adding problem: sum the two marked values of a length-T sequence (long-range memory).

Command:
    python launch/train.py --config=configs/sequence/adding.py --workdir=runs/adding/lstm_t100
    python launch/sweep.py --config=configs/sequence/adding.py --workdir=runs/adding --parallel=2
    python launch/report.py runs/adding --metric=test/mse --curves=model.name --target=0.01

Expected result (seed 0, 2-core CPU, 4000 steps; predicting the mean gives MSE 1/6 = 0.167):
T=100: lstm test MSE 0.0046 (eval MSE <= 0.01 from step 3250; 167 s of training), gru 0.0010
(from step 750; 131 s), rnn 0.167 (never; 34 s). T=50: lstm 0.0009 (1750), gru 0.0002 (750),
rnn 0.0106 (eval 0.0093 at step 3750). `--hidden-gradients` in the report draws ||dL/dh_t||.
"""

import ml_collections

from research.config import base_config

CELLS = ("rnn", "lstm", "gru")
LENGTHS = (50, 100)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """One 128-unit layer of `arg` (rnn | lstm | gru; default lstm) on adding/t100, Adam."""
    c = base_config()
    c.data.name = "adding/t100"
    c.batch_size = 50
    c.total_steps = 4000
    c.log_every_steps = 100
    c.eval_every_steps = 250
    c.model = ml_collections.ConfigDict(
        {"name": arg or "lstm", "hidden_sizes": (128,), "pooling": "last"}
    )
    c.task = ml_collections.ConfigDict({"name": "regression"})
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_factor = 0.1
    c.optimizer.grad_clip_norm = 1.0
    c.diagnostics = False
    c.checkpoint.every_steps = 1000
    c.checkpoint.best_metric = "eval/mse"
    c.checkpoint.best_mode = "min"
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """Every cell at T = 50 and 100."""
    del arg
    return [
        {"model.name": cell, "data.name": f"adding/t{length}"}
        for length in LENGTHS
        for cell in CELLS
    ]
