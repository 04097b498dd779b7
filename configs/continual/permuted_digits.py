"""Continual learning on permuted digits: task k = digits with a fixed pixel permutation.

Tasks are trained one after another in one run (task 0: the plain digits). After each stage
every task is evaluated on its test split: `summary.json` holds `test/accuracy_matrix[i][j]`,
the accuracy on task j after training stage i. EWC (Fisher of each task's data) keeps the
first task from being forgotten; `--config.ewc.weight=0` is plain fine-tuning and
`--config.ewc.mode=l2sp` anchors with the identity instead of the Fisher.

Command:
    python launch/train.py --config=configs/continual/permuted_digits.py --workdir=runs/ewc
    python launch/train.py --config=configs/continual/permuted_digits.py --workdir=runs/plain \\
        --config.ewc.weight=0

Expected result (2-core CPU, about 12 s per run; mean over seeds 0-4 of test accuracy; the
EWC weight 10000 and the L2-SP weight 0.03 were chosen on the validation split with seed 0,
as the weights with the best mean validation accuracy over both tasks after stage 2):

    method                 task 0 after stage 1   task 0 after stage 2   task 1 after stage 2
    plain (ewc.weight=0)   0.974                  0.500                  0.964
    EWC (weight 10000)     0.974                  0.872                  0.946
    L2-SP (weight 0.03)    0.974                  0.794                  0.927

EWC keeps 37 points more of task 0 than plain fine-tuning and loses 1.8 points on task 1.
L2-SP: `--config.ewc.mode=l2sp --config.ewc.weight=0.03`.
"""

import ml_collections

from research.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Two tasks, 400 steps each; `arg` is unused."""
    c = base_config()
    c.seed = 0
    c.batch_size = 64
    c.total_steps = 800
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (256, 128), "dropout_rate": 0.0, "dtype": "float32"}
    )
    c.task = ml_collections.ConfigDict(
        {
            "name": "permuted_classification",
            "num_tasks": 2,
            "permutation_seed": 0,
            "label_smoothing": 0.0,
        }
    )
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.ewc.weight = 10000.0  # chosen on validation data (see the docstring)
    c.ewc.fisher_examples = 500
    c.checkpoint.every_steps = 200
    c.checkpoint.best_metric = ""
    return c
