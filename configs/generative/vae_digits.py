"""A VAE on the bundled 8x8 digits: MLP encoder/decoder, 8 Gaussian latents, Bernoulli decoder.

Command:
    python launch/train.py --config=configs/generative/vae_digits.py --workdir=runs/vae_digits

Expected result (seed 0, 1965 steps, about 16 s end to end on a 2-core CPU), per test example in
nats: test/elbo -24.13 (= -(reconstruction 20.51 + kl 3.62)), test/iwae -23.78 with 64 samples,
test/active_units 7 of 8; test/mse 0.0237 per pixel from the posterior mean. The Bernoulli NLL
of a perfect reconstruction of these non-binary pixels is 13.62 nats, so reconstruction is not
expected to reach 0. `configs/generative/vae_digits.py:conv` (conv_vae, stages 32-64): elbo
-24.27, iwae -23.95, 8 active units, mse 0.0232, ~26 s.

End-of-run entries (seed 0): probe/test_accuracy 0.922 (a logistic regression on the 8 raw
posterior means), test/pca_mse 0.0248 (PCA with 8 components; the VAE's 0.0237 is about level).

beta sweep (`python launch/sweep.py --config=configs/generative/vae_digits.py
--workdir=runs/vae_beta --parallel=2`, about 80 s on 2 cores), beta: elbo / kl / mse / active
units / probe accuracy: 0.5: -25.03 / 6.34 / 0.0165 / 8 / 0.917; 1: -24.13 / 3.62 / 0.0237 /
7 / 0.922; 2: -24.97 / 1.55 / 0.0363 / 4 / 0.867; 4: -27.21 / 0.001 / 0.0745 / 0 / 0.286 (the
posterior collapses onto the prior, and the unstandardised probe shows it).
"""

import ml_collections

from research.config import base_config
from research.tasks.reconstruction import task_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Negative ELBO with KL annealing; the eval negative ELBO picks the best checkpoint.

    `arg` "conv" trains the convolutional VAE instead of the MLP one.
    """
    c = base_config()
    c.batch_size = 64
    c.total_epochs = 100.0
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.model = ml_collections.ConfigDict(
        {
            "name": "vae",
            "hidden_sizes": (128, 64),
            "latent_size": 8,
            "activation": "relu",
            "likelihood": "bernoulli",  # gaussian needs task.loss='mse'
            "decoder_scale": 0.1,  # gaussian: fixed (or initial learned) pixel std
            "learn_scale": False,
            "dtype": "float32",
        }
    )
    if arg == "conv":  # stride-2 conv stages 8x8 -> 4x4 -> 2x2 and transposed convs back
        del c.model.hidden_sizes
        c.model.name, c.model.stage_features = "conv_vae", (32, 64)
    c.task = task_config(loss="bce", vae=True, beta=1.0, kl_warmup_steps=500, iwae_samples=64)
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 100
    c.checkpoint.every_steps = 1000
    c.checkpoint.best_metric = "eval/loss"
    c.checkpoint.best_mode = "min"
    return c


BETAS = (0.5, 1.0, 2.0, 4.0)


def get_sweep(arg: str | None = None) -> list[dict]:
    """beta-VAE: the KL weight from 0.5 to 4 (with `arg` "conv", the convolutional VAE)."""
    del arg  # the model comes from the config's own arg
    return [{"task.beta": beta} for beta in BETAS]
