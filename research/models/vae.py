"""Variational autoencoders (Kingma & Welling 2014): `VAE` (MLP) and `ConvVAE`.

The encoder halves of research.models.autoencoder with two heads, `encoder/mean` and
`encoder/logvar`, give the diagonal Gaussian posterior q(z|x) = N(mean, exp(logvar)). While
training, z = mean + exp(0.5 logvar) * eps with eps ~ N(0, I) drawn from the "sample" rng stream
(the reparameterisation trick); with train=False z is the posterior mean unless `sample=True`.
The decoder is `bernoulli` (outputs are logits, sigmoid is the pixel probability) or `gaussian`
(outputs are the mean, squashed into [0, 1] by a sigmoid, and the scale is exp(`logscale`):
fixed at `decoder_scale`, or a learned scalar parameter `decoder/logscale` starting there).

`__call__(x, *, train)` returns `(outputs, aux)` with aux {"mean", "logvar", "latent": z,
"hidden"} (plus "logscale" for a gaussian decoder); `encode`, `decode` and `generate` are usable
with `model.apply(..., method=...)`; `generate(n)` needs a "sample" rng.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.autoencoder import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    check_input_shape,
)

LIKELIHOODS = ("bernoulli", "gaussian")
_HEADS = ("mean", "logvar")


class _VAEBase(nn.Module):
    """Sampling, decoding and generation shared by the MLP and convolutional VAEs (which
    define the fields and build `encoder` and `decoder` in `setup`)."""

    def __call__(
        self, x: jnp.ndarray, *, train: bool, sample: bool = False
    ) -> tuple[jnp.ndarray, dict]:
        """(decoded outputs shaped like x, aux): z sampled while training or with `sample`."""
        heads, hidden = self.encoder(x)
        mean, logvar = heads["mean"], heads["logvar"]
        z = self.reparameterize(mean, logvar) if train or sample else mean
        outputs, logscale = self._decode(z)
        aux = {"mean": mean, "logvar": logvar, "latent": z, "hidden": hidden}
        if logscale is not None:
            aux["logscale"] = logscale
        return outputs, aux

    def reparameterize(self, mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
        """z = mean + exp(0.5 logvar) * eps, eps ~ N(0, I) from the "sample" rng stream."""
        eps = jax.random.normal(self.make_rng("sample"), mean.shape, mean.dtype)
        return mean + jnp.exp(0.5 * logvar) * eps

    def encode(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The posterior's (mean, logvar), each (B, latent_size)."""
        heads, _ = self.encoder(x)
        return heads["mean"], heads["logvar"]

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        """Decoder outputs for codes z: logits (bernoulli) or means in [0, 1] (gaussian)."""
        return self._decode(z)[0]

    def generate(self, n: int) -> jnp.ndarray:
        """n images from the prior: z ~ N(0, I) ("sample" rng), decoded to pixel means in [0, 1]
        (probabilities for a bernoulli decoder)."""
        z = jax.random.normal(self.make_rng("sample"), (n, self.latent_size), jnp.float32)
        outputs = self.decode(z)
        return jax.nn.sigmoid(outputs) if self.likelihood == "bernoulli" else outputs

    def _decode(self, z: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        raw, learned = self.decoder(z)
        if self.likelihood == "bernoulli":
            return raw, None
        logscale = learned if learned is not None else jnp.float32(math.log(self.decoder_scale))
        return jax.nn.sigmoid(raw), logscale

    def _decoder_logscale(self) -> float | None:
        """The initial value of a learned `decoder/logscale` (None: no such parameter)."""
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got '{self.likelihood}'")
        if self.likelihood == "gaussian" and self.learn_scale:
            return math.log(self.decoder_scale)
        return None


class VAE(_VAEBase):
    """MLP VAE: x -> hidden layers -> (mean, logvar) -> z -> mirrored layers -> outputs."""

    input_shape: Sequence[int] | None = None  # one example's shape; get_model fills it from data
    hidden_sizes: Sequence[int] = (256, 128)
    latent_size: int = 16
    likelihood: str = "bernoulli"  # bernoulli (logits) | gaussian (mean + scale)
    decoder_scale: float = 0.1  # gaussian: the fixed (or initial learned) standard deviation
    learn_scale: bool = False  # gaussian: learn decoder/logscale
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    def setup(self) -> None:
        """The `encoder` (mean and logvar heads) and `decoder` halves."""
        init = {
            "activation": self.activation,
            "kernel_init": self.kernel_init,
            "init_scale": self.init_scale,
            "dtype": self.dtype,
        }
        shape = check_input_shape("VAE", self.input_shape)
        self.encoder = MLPEncoder(self.hidden_sizes, self.latent_size, _HEADS, **init)
        self.decoder = MLPDecoder(
            tuple(reversed(self.hidden_sizes)), shape, logscale=self._decoder_logscale(), **init
        )


class ConvVAE(_VAEBase):
    """Convolutional VAE: stride-2 conv stages -> (mean, logvar) -> z -> transposed convs."""

    input_shape: Sequence[int] | None = None  # (H, W, C); get_model fills it from the data
    stage_features: Sequence[int] = (32, 64)
    latent_size: int = 16
    likelihood: str = "bernoulli"
    decoder_scale: float = 0.1
    learn_scale: bool = False
    kernel_size: int = 3
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    def setup(self) -> None:
        """The `encoder` (mean and logvar heads) and `decoder` halves."""
        init = {
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "kernel_init": self.kernel_init,
            "init_scale": self.init_scale,
            "dtype": self.dtype,
        }
        shape = check_input_shape("ConvVAE", self.input_shape)
        self.encoder = ConvEncoder(self.stage_features, self.latent_size, _HEADS, **init)
        self.decoder = ConvDecoder(
            self.stage_features, shape, logscale=self._decoder_logscale(), **init
        )
