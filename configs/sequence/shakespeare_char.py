"""Character-level language model on tiny_shakespeare, trained with truncated BPTT.

The training text is cut into 64 parallel streams read 100 characters at a time in order; each
stream's LSTM state carries over to its next window without gradient (`data.tbptt`). The
vocabulary is the characters of the training text (case kept); eval and test windows start from
a zero state. Metrics: per-character cross-entropy, perplexity, bits per character.

Command (needs tiny_shakespeare prepared: `tfds build tiny_shakespeare --file_format=array_record`):
    python launch/train.py --config=configs/sequence/shakespeare_char.py --workdir=runs/shakespeare

Expected result: not measured here (no dataset on the development machine); the code path runs
in tests/test_sequences.py on TFDS mock data. A 2x512 LSTM of this kind usually reaches about
1.5 bits per character on the validation text.
"""

import ml_collections

from research.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Embedding 64 -> LSTM 512 -> LSTM 512 -> per-step softmax over characters."""
    del arg
    c = base_config()
    c.data.name = "tiny_shakespeare"
    c.data.text.level = "char"
    c.data.text.lowercase = False
    c.data.text.lm_length = 100
    c.data.tbptt = True
    c.batch_size = 64
    c.total_steps = 5000
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.model = ml_collections.ConfigDict(
        {
            "name": "lstm",
            "hidden_sizes": (512, 512),
            "pooling": "none",
            "embed_dim": 64,
            "dropout_rate": 0.2,
        }
    )
    c.task = ml_collections.ConfigDict({"name": "language_model"})
    c.optimizer.learning_rate = 2e-3
    c.optimizer.grad_clip_norm = 5.0
    c.checkpoint.every_steps = 500
    c.checkpoint.best_metric = "eval/loss"
    c.checkpoint.best_mode = "min"
    c.diagnostics = False
    return c
