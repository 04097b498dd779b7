"""Pixel-by-pixel digits: an 8x8 digit read as a sequence of 64 pixels (sequential MNIST in
miniature), classified from the LSTM's last state. `:mnist` is the 784-step original.

Command:
    python launch/train.py --config=configs/sequence/digits_sequential.py --workdir=runs/seq_digits
    python launch/train.py --config=configs/sequence/digits_sequential.py:mnist \\
        --workdir=runs/seq_mnist  # mnist prepared: tfds build mnist --file_format=array_record

Expected result (digits, seed 0, 2-core CPU): test accuracy 0.900 (macro F1 0.899; best
validation accuracy 0.944) after 2357 steps, 37 s of training. Read row by row
(`--config.task.image_order=rows`, 8 steps of 8 pixels) it is easier: 0.969 in 8 s. MNIST is not
measured here (no dataset on the development machine).
"""

import ml_collections

from research.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """One 128-unit LSTM over the pixels (`arg` "mnist": 28x28 MNIST, 784 steps)."""
    c = base_config()
    c.data.name = "mnist" if arg == "mnist" else "digits"
    if arg == "mnist":
        c.data.train_split, c.data.eval_split = "train[:55000]", "train[55000:]"
    c.batch_size = 64
    c.total_epochs = 120.0 if arg != "mnist" else 20.0
    c.log_every_steps = 50
    c.eval_every_epochs = 5.0
    c.model = ml_collections.ConfigDict({"name": "lstm", "hidden_sizes": (128,)})
    c.task = ml_collections.ConfigDict(
        {"name": "sequence_classification", "label_smoothing": 0.0, "image_order": "pixels"}
    )
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_epochs = 1.0
    c.optimizer.grad_clip_norm = 1.0
    c.checkpoint.every_epochs = 5.0  # = eval_every_epochs: the best checkpoint is kept
    c.diagnostics = False
    return c
