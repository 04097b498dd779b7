"""Pure numeric pieces of autoencoder training: Gaussian KL and densities, ELBO / IWAE bounds,
free bits, KL annealing, input corruption for denoising, sparsity penalties, active units.

Everything here is a small function of arrays (and a PRNG key where noise is drawn), so each
piece is tested on its own against closed forms, Monte Carlo estimates or jax.grad.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

CORRUPTIONS = ("none", "gaussian", "masking", "salt_pepper")
SPARSITY = ("none", "l1", "kl")
_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per dimension: 0.5 (mean^2 + var - 1 - logvar)."""
    return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def gaussian_log_density(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(x; mean, exp(logvar)) per element (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar))


def standard_normal_log_density(z: jax.Array) -> jax.Array:
    """log N(z; 0, 1) per element."""
    return -0.5 * (_LOG_2PI + jnp.square(z))


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log Bern(x; sigmoid(logits)) per element, x in [0, 1] (the negative binary CE)."""
    return -optax.sigmoid_binary_cross_entropy(logits, x)


def log_mean_exp(values: jax.Array, axis: int = 0) -> jax.Array:
    """log(mean(exp(values))) along `axis`, without overflow."""
    return jax.nn.logsumexp(values, axis=axis) - math.log(values.shape[axis])


def iwae_bound(log_weights: jax.Array) -> jax.Array:
    """The importance-weighted bound (Burda et al. 2016) from k log weights per example.

    `log_weights` is (k, ...) with log w = log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x);
    the bound log mean_k w_k rises towards log p(x) as k grows.
    """
    return log_mean_exp(log_weights, axis=0)


def elbo_bound(log_weights: jax.Array) -> jax.Array:
    """The Monte Carlo ELBO from the same (k, ...) log weights: mean_k log w_k (<= iwae_bound)."""
    return jnp.mean(log_weights, axis=0)


def free_bits_kl(kl_per_dim: jax.Array, floor: float) -> jax.Array:
    """The KL term with free bits (Kingma et al. 2016): sum_j max(floor, mean over the batch of
    KL_j), so dimensions below `floor` nats get no gradient pushing them to the prior."""
    return jnp.sum(jnp.maximum(floor, jnp.mean(kl_per_dim, axis=0)))


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
    """beta, ramped linearly from 0 at step 0 to beta at `warmup_steps` (0: no annealing)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    ramp = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
    return beta * ramp


def corrupt(images: jax.Array, rng: jax.Array, kind: str, amount: float) -> jax.Array:
    """A corrupted copy of `images` (values in [0, 1]) for a denoising autoencoder.

    gaussian: add N(0, amount^2) noise to every value (not clipped, as in Vincent et al. 2010);
    masking: set each value to 0 with probability `amount`; salt_pepper: with probability
    `amount` replace a value by 0 or 1 (equally likely). Noise is drawn per value.
    """
    if kind == "none":
        return images
    if kind == "gaussian":
        return images + amount * jax.random.normal(rng, images.shape, images.dtype)
    if kind == "masking":
        keep = jax.random.bernoulli(rng, 1.0 - amount, images.shape)
        return jnp.where(keep, images, 0.0).astype(images.dtype)
    if kind == "salt_pepper":
        hit_rng, salt_rng = jax.random.split(rng)
        hit = jax.random.bernoulli(hit_rng, amount, images.shape)
        salt = jax.random.bernoulli(salt_rng, 0.5, images.shape).astype(images.dtype)
        return jnp.where(hit, salt, images)
    raise ValueError(f"unknown corruption '{kind}'; known: {', '.join(CORRUPTIONS)}")


def l1_sparsity(hidden: jax.Array) -> jax.Array:
    """Mean |h| over examples and units: the L1 activity penalty (before its weight)."""
    return jnp.mean(jnp.abs(hidden))


def kl_sparsity(hidden: jax.Array, target: float, eps: float = 1e-6) -> jax.Array:
    """sum_j KL(target || rho_j), rho_j the batch-mean activation of unit j (activations in
    (0, 1), e.g. sigmoid units); Ng's sparse-autoencoder penalty (before its weight)."""
    units = hidden.reshape(hidden.shape[0], -1)
    rho = jnp.clip(jnp.mean(units, axis=0), eps, 1.0 - eps)
    kl = target * jnp.log(target / rho) + (1 - target) * jnp.log((1 - target) / (1 - rho))
    return jnp.sum(kl)


def sparsity_penalty(hidden: jax.Array, kind: str, weight: float, target: float) -> jax.Array:
    """weight * the `kind` sparsity penalty of the hidden activations (0 for "none")."""
    if kind == "none":
        return jnp.zeros((), jnp.float32)
    if kind == "l1":
        return weight * l1_sparsity(hidden)
    if kind == "kl":
        return weight * kl_sparsity(hidden, target)
    raise ValueError(f"unknown sparsity '{kind}'; known: {', '.join(SPARSITY)}")


def latent_activity(mean_sum: np.ndarray, mean_sq_sum: np.ndarray, count: float) -> np.ndarray:
    """Cov_x(E_q[z_u | x]) per latent unit u from summed first and second moments of the
    posterior means over a dataset (population variance, as Burda et al. 2016)."""
    first = np.asarray(mean_sum, np.float64) / count
    second = np.asarray(mean_sq_sum, np.float64) / count
    return np.maximum(second - np.square(first), 0.0)


def active_units(
    mean_sum: np.ndarray, mean_sq_sum: np.ndarray, count: float, threshold: float = 0.01
) -> int:
    """The number of latent units whose activity (see `latent_activity`) exceeds `threshold`."""
    return int(np.sum(latent_activity(mean_sum, mean_sq_sum, count) > threshold))
