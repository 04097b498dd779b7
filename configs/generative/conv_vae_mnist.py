"""A convolutional VAE on MNIST (or Fashion-MNIST): 28x28 -> stride-2 convs 32-64 -> 16
Gaussian latents -> transposed convs, Bernoulli decoder, beta 1 with KL annealing.

The dataset must be prepared in ArrayRecord format in the data dir (no download happens at run
time). On a machine with network:
    tfds build mnist --file_format=array_record --data_dir=DIR
then copy DIR over and pass `--config.data.data_dir=DIR` (or set $TFDS_DATA_DIR).

Command (a user machine; one GPU):
    python launch/train.py --config=configs/generative/conv_vae_mnist.py --workdir=runs/cvae

`arg` names the dataset: mnist (default) or fashion_mnist; the last 10% of `train` is held out
for validation. The end of the run writes reconstructions, prior samples, interpolations, latent
arithmetic and PCA / t-SNE maps of the test latents into plots/, and reports `test/pca_mse`
(PCA with 16 components) and `probe/test_accuracy` (a logistic regression on the posterior
means of the training images) beside the ELBO, IWAE and active units.

Expected result: not measured by this project (these datasets cannot be fetched on its build
machines; the code path is tested on `tfds.testing.mock_data` in
tests/test_generative_artifacts.py); 30 epochs take minutes on one GPU. What to check: test/mse
below test/pca_mse, test/active_units out of 16, and probe/test_accuracy.
"""

import ml_collections

from research.config import base_config
from research.tasks.reconstruction import task_config

DATASETS = ("mnist", "fashion_mnist")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Adam with warmup+cosine for 30 epochs; the eval negative ELBO picks the best checkpoint."""
    name = arg or "mnist"
    if name not in DATASETS:
        raise ValueError(f"configs/generative/conv_vae_mnist.py:{name}: choose one of {DATASETS}")
    c = base_config()
    c.batch_size = 128
    c.total_epochs = 30.0
    c.log_every_steps = 100
    c.eval_every_epochs = 1.0
    c.model = ml_collections.ConfigDict(
        {
            "name": "conv_vae",
            "stage_features": (32, 64),
            "latent_size": 16,
            "likelihood": "bernoulli",
            "decoder_scale": 0.1,
            "learn_scale": False,
            "dtype": "float32",
        }
    )
    c.data.name = name
    c.data.train_split = "train[:90%]"
    c.data.eval_split = "train[90%:]"
    c.data.test_split = "test"
    c.task = task_config(loss="bce", vae=True, beta=1.0, kl_warmup_steps=2000, iwae_samples=16)
    c.evaluation.embedding_examples = 2000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_epochs = 0.5
    c.checkpoint.every_epochs = 1.0
    c.checkpoint.best_metric = "eval/loss"
    c.checkpoint.best_mode = "min"
    return c
