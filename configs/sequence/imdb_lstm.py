"""IMDB review sentiment: a bidirectional LSTM with attention pooling over word embeddings.

Words are lowercased, `<br />` removed, punctuation split off; the vocabulary is the 20,000
most frequent training words seen at least twice (PAD 0, OOV 1); reviews keep their LAST 256
tokens (`truncate="pre"`: the verdict tends to come at the end), right-padded with real lengths.
The model attends over the real steps only; attention weights are plotted for a few reviews.

Command (needs imdb_reviews prepared: `tfds build imdb_reviews --file_format=array_record`):
    python launch/train.py --config=configs/sequence/imdb_lstm.py --workdir=runs/imdb_lstm

Expected result: not measured here (no dataset on the development machine); the code path runs
in tests/test_sequences.py on TFDS mock data. Published bidirectional-LSTM results on this
split are around 0.87-0.89 test accuracy.
"""

import ml_collections

from research.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Embedding 128 -> BiLSTM 128 -> attention -> 2 classes, Adam, 3 epochs."""
    del arg
    c = base_config()
    c.data.name = "imdb_reviews"
    c.data.train_split, c.data.eval_split = "train[:90%]", "train[90%:]"
    c.data.text.level = "word"
    c.data.text.min_count = 2
    c.data.text.max_vocab = 20_000
    c.data.text.max_length = 256
    c.data.text.truncate = "pre"
    c.batch_size = 64
    c.total_epochs = 3.0
    c.log_every_steps = 50
    c.eval_every_epochs = 0.5
    c.model = ml_collections.ConfigDict(
        {
            "name": "lstm",
            "hidden_sizes": (128,),
            "bidirectional": True,
            "pooling": "attention",
            "embed_dim": 128,
            "dropout_rate": 0.3,
            "recurrent_dropout": 0.2,
        }
    )
    c.task = ml_collections.ConfigDict(
        {"name": "sequence_classification", "label_smoothing": 0.0, "image_order": "pixels"}
    )
    c.optimizer.learning_rate = 1e-3
    c.optimizer.grad_clip_norm = 1.0
    c.checkpoint.every_epochs = 0.5
    c.diagnostics = False
    return c
