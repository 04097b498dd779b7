"""Reconstruction: autoencoders (plain, denoising, sparse) and VAEs trained on images in [0, 1].

The model maps an image to outputs of the same shape: logits (sigmoid gives the reconstruction)
or, for a VAE with a gaussian decoder (aux holds its "logscale"), the pixel means themselves.

* Plain autoencoder (`vae=False`): the loss is the per-pixel mean of `loss` ("mse" of the
  sigmoid reconstruction, or "bce" of the logits), plus an optional sparsity penalty on the
  encoder's last hidden activations (`sparsity` "l1": weight * mean |h|; "kl": weight *
  sum_j KL(rho || rho_hat_j), rho_hat_j the batch-mean activation of sigmoid unit j).
* VAE (`vae=True`): the negative ELBO per example, in nats: the reconstruction NLL summed over
  pixels (Bernoulli for "bce", Gaussian for "mse") plus beta * KL(q(z|x) || N(0, I)); beta ramps
  linearly from 0 over `kl_warmup_steps` and `free_bits` floors each latent dimension's
  batch-mean KL (Kingma et al. 2016). Train metrics report reconstruction and KL apart.
* Denoising (`corruption` gaussian / masking / salt_pepper): `prepare` corrupts the input the
  model sees; the clean image stays the target. Evaluation corrupts with the run's fixed eval key.

Evaluation reports per-pixel `mse` and `bce` of the reconstruction (a VAE decodes its posterior
mean), `input_mse` (corrupted vs clean input) when denoising, and for VAEs the per-example
`elbo`, `reconstruction`, `kl`, the importance-weighted estimate `iwae` of log p(x) with
`iwae_samples` samples (Burda et al. 2016), and `active_units` (Cov_x E_q[z_u|x] > 0.01).
`loss` is the per-pixel reconstruction loss (autoencoders) or the negative ELBO with beta = 1 and
no free bits (VAEs), so it is comparable across those settings. Labels are carried, not used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from research import data
from research.errors import ConfigError
from research.tasks import autoencoding as ae
from research.tasks.base import Task
from research.tasks.registry import TaskData, TaskEntry

LOSSES = ("mse", "bce")
# The config key of each field where they differ (`loss` would shadow the Task method).
_CONFIG_KEYS = {"reconstruction_loss": "loss"}
_BCE_EPS = 1e-7  # clipping of probabilities in the BCE of a gaussian decoder's means


@dataclasses.dataclass(frozen=True)
class ReconstructionTask(Task):
    """Images in `batch['image']` are both the (possibly corrupted) input and the target."""

    input_size: int = 0  # values per example: the output width a flat (MLP) model needs
    reconstruction_loss: str = "bce"  # config key task.loss: mse | bce
    vae: bool = False
    beta: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0  # nats per latent dimension; 0: off
    corruption: str = "none"  # none | gaussian | masking | salt_pepper
    noise_std: float = 0.3  # gaussian
    mask_fraction: float = 0.25  # masking
    noise_fraction: float = 0.1  # salt_pepper
    sparsity: str = "none"  # none | l1 | kl
    sparsity_weight: float = 1e-3
    sparsity_target: float = 0.05  # kl: the target mean activation rho
    iwae_samples: int = 16  # eval: posterior samples per example for the ELBO and IWAE

    def __post_init__(self) -> None:
        _check_choice("loss", self.reconstruction_loss, LOSSES)
        _check_choice("corruption", self.corruption, ae.CORRUPTIONS)
        _check_choice("sparsity", self.sparsity, ae.SPARSITY)
        for key in ("beta", "free_bits", "noise_std", "sparsity_weight", "kl_warmup_steps"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"task.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("mask_fraction", "noise_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"task.{key} must be in [0, 1], got {getattr(self, key)}")
        if not 0 < self.sparsity_target < 1:
            raise ConfigError(f"task.sparsity_target must be in (0, 1), got {self.sparsity_target}")
        if self.iwae_samples < 1:
            raise ConfigError(f"task.iwae_samples must be >= 1, got {self.iwae_samples}")

    @classmethod
    def from_config(cls, options: Mapping[str, Any], *, input_size: int) -> ReconstructionTask:
        """Build from `config.task` (without its name); an unknown key is a ConfigError."""
        fields = {_CONFIG_KEYS.get(f.name, f.name): f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields) - {"input_size"})
        if unknown:
            raise ConfigError(f"task 'reconstruction' has no option task.{unknown[0]}")
        kwargs = {fields[k]: v for k, v in options.items() if k != "input_size"}
        return cls(input_size=input_size, **kwargs)

    @property
    def model_outputs(self) -> int:
        """Width of a flat model's output layer: one value per input value."""
        return self.input_size

    @property
    def corruption_amount(self) -> float:
        """The parameter of the configured corruption (std or fraction)."""
        return {
            "gaussian": self.noise_std,
            "masking": self.mask_fraction,
            "salt_pepper": self.noise_fraction,
        }.get(self.corruption, 0.0)

    def check_model(self, model: nn.Module) -> None:
        """Refuse, before anything is written, a model whose outputs this task cannot score."""
        name = type(model).__name__
        likelihood = getattr(model, "likelihood", None)
        if self.vae and likelihood is None:
            raise ConfigError(
                f"task.vae=True needs a model with a Gaussian encoder (vae, conv_vae), not {name}"
            )
        if not self.vae and likelihood is not None:
            raise ConfigError(f"model {name} is variational: set task.vae=True")
        wanted = {"bce": "bernoulli", "mse": "gaussian"}[self.reconstruction_loss]
        if self.vae and likelihood != wanted:
            raise ConfigError(
                f"task.loss='{self.reconstruction_loss}' is the {wanted} likelihood; set "
                f"model.likelihood='{wanted}' (the model's is '{likelihood}')"
            )
        if self.sparsity != "none" and not hasattr(model, "encode"):
            raise ConfigError(
                f"task.sparsity needs an autoencoder's hidden activations, not {name}"
            )
        if self.sparsity == "kl" and getattr(model, "activation", None) != "sigmoid":
            raise ConfigError(
                "task.sparsity='kl' needs activations in (0, 1): set model.activation='sigmoid'"
            )

    def transform(self) -> Callable[[dict], dict]:
        """Images scaled to [0, 1] float32 (labels kept, unused)."""
        return data.make_transform()

    def prepare(self, batch: dict, step: jax.Array, rng: jax.Array | None = None) -> dict:
        """Inside the train step: the corrupted input (denoising) and this step's KL weight."""
        out = dict(batch)
        if self.vae:
            out["kl_weight"] = ae.kl_weight(step, self.beta, self.kl_warmup_steps)
        if self.corruption != "none":
            out["noisy"] = ae.corrupt(batch["image"], rng, self.corruption, self.corruption_amount)
        return out

    def inputs(self, batch: dict[str, jax.Array]) -> jax.Array:
        """What the model sees: the corrupted images when denoising, else the images."""
        return batch["noisy"] if "noisy" in batch else batch["image"]

    def loss(self, outputs: jax.Array, aux: dict, batch: dict) -> tuple[jax.Array, dict]:
        """Mean training objective and batch-mean metrics (see the module docstring)."""
        x = batch["image"]
        outputs = outputs.reshape(x.shape)
        metrics = {"mse": jnp.mean(jnp.square(_reconstruction(outputs, aux) - x))}
        if self.vae:
            rec = -_per_example(_log_likelihood(outputs, aux, x))
            kl_dims = ae.gaussian_kl(aux["mean"], aux["logvar"])
            kl = jnp.sum(kl_dims, axis=-1)
            kl_term = ae.free_bits_kl(kl_dims, self.free_bits) if self.free_bits else jnp.mean(kl)
            weight = batch.get("kl_weight", jnp.float32(self.beta))
            loss = jnp.mean(rec) + weight * kl_term
            metrics |= {
                "reconstruction": jnp.mean(rec),
                "kl": jnp.mean(kl),
                "elbo": -jnp.mean(rec + kl),
                "kl_weight": weight,
            }
        else:
            loss = jnp.mean(self._pixel_loss(outputs, aux, x))
            metrics["reconstruction"] = loss
        if self.sparsity != "none":
            penalty = ae.sparsity_penalty(
                aux["hidden"], self.sparsity, self.sparsity_weight, self.sparsity_target
            )
            metrics["sparsity"] = penalty
            loss = loss + penalty
        return loss, {**metrics, "loss": loss}

    def _pixel_loss(self, outputs: jax.Array, aux: dict, x: jax.Array) -> jax.Array:
        """The configured per-pixel loss: squared error of the reconstruction, or its BCE."""
        if self.reconstruction_loss == "mse":
            return jnp.square(_reconstruction(outputs, aux) - x)
        return _bce(outputs, aux, x)

    def eval_outputs(self, apply: Callable, batch: dict, rng: jax.Array) -> tuple[Any, dict]:
        """The model on the (corrupted) input, its latent mean decoded; for a VAE also
        `iwae_samples` posterior samples per example and their decoded outputs."""
        corrupt_rng, sample_rng = jax.random.split(rng)
        x = batch["image"]
        inputs = ae.corrupt(x, corrupt_rng, self.corruption, self.corruption_amount)
        outputs, aux = apply(inputs, train=False, rngs={"sample": sample_rng})
        aux = {**aux, "inputs": inputs}
        if self.vae:
            mean, logvar = aux["mean"], aux["logvar"]
            eps = jax.random.normal(sample_rng, (self.iwae_samples, *mean.shape), mean.dtype)
            z = mean + jnp.exp(0.5 * logvar) * eps
            decoded = apply(z.reshape(-1, mean.shape[-1]), method="decode")
            aux |= {"samples": z, "sample_outputs": decoded.reshape(z.shape[:2] + x.shape[1:])}
        return outputs, aux

    def eval_sums(self, outputs: jax.Array, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked sums of squared error, cross-entropy and (VAE) ELBO terms and latent moments."""
        x, mask = batch["image"], batch["mask"]
        outputs = outputs.reshape(x.shape)
        sums = {
            "count": jnp.sum(mask),
            "values": jnp.sum(mask) * (x.size // x.shape[0]),
            "squared_error": _masked(jnp.square(_reconstruction(outputs, aux) - x), mask),
            "cross_entropy": _masked(_bce(outputs, aux, x), mask),
        }
        if self.corruption != "none" and "inputs" in aux:
            sums["input_squared_error"] = _masked(jnp.square(aux["inputs"] - x), mask)
        if self.vae:
            sums |= self._vae_sums(aux, x, mask)
        return sums

    def _vae_sums(self, aux: dict, x: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        """ELBO terms and the IWAE estimate from the posterior samples, and latent moments."""
        mean, logvar = aux["mean"], aux["logvar"]
        z, decoded = aux["samples"], aux["sample_outputs"]
        log_lik = jax.vmap(lambda o: _per_example(_log_likelihood(o, aux, x)))(decoded)
        log_prior = jnp.sum(ae.standard_normal_log_density(z), axis=-1)
        log_q = jnp.sum(ae.gaussian_log_density(z, mean, logvar), axis=-1)
        rec = -jnp.mean(log_lik, axis=0)
        kl = jnp.sum(ae.gaussian_kl(mean, logvar), axis=-1)
        return {
            "reconstruction": _masked(rec, mask),
            "kl": _masked(kl, mask),
            "elbo": _masked(-(rec + kl), mask),
            "iwae": _masked(ae.iwae_bound(log_lik + log_prior - log_q), mask),
            "mean_sum": jnp.sum(mean * mask[:, None], axis=0),
            "mean_sq_sum": jnp.sum(jnp.square(mean) * mask[:, None], axis=0),
        }

    def finalize(self, sums: dict[str, Any]) -> dict[str, float]:
        """Per-pixel reconstruction errors; per-example (nats) ELBO, IWAE, KL; active units."""
        count, values = float(sums["count"]), float(sums["values"])
        metrics = {
            "mse": float(sums["squared_error"]) / values,
            "bce": float(sums["cross_entropy"]) / values,
        }
        if "input_squared_error" in sums:
            metrics["input_mse"] = float(sums["input_squared_error"]) / values
        if not self.vae:
            metrics["loss"] = metrics["bce" if self.reconstruction_loss == "bce" else "mse"]
            return metrics
        for key in ("reconstruction", "kl", "elbo", "iwae"):
            metrics[key] = float(sums[key]) / count
        metrics["loss"] = -metrics["elbo"]
        metrics["active_units"] = float(
            ae.active_units(sums["mean_sum"], sums["mean_sq_sum"], count)
        )
        return metrics

    def summary(self, sums: dict[str, Any]) -> dict[str, Any]:
        """For VAEs, each latent unit's activity Cov_x(E_q[z_u|x]) (the active-units statistic)."""
        if not self.vae:
            return {}
        activity = ae.latent_activity(sums["mean_sum"], sums["mean_sq_sum"], float(sums["count"]))
        return {"latent_activity": [float(a) for a in activity]}

    def plots(self, sums: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
        """No figures from the sums (reconstruction and sample images need the model)."""
        del sums, directory, prefix
        return []


def task_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.task` for a reconstruction run: every option at its default, then `overrides`
    (so `--config.task.<key>=...` can override any of them)."""
    options = {
        _CONFIG_KEYS.get(f.name, f.name): f.default
        for f in dataclasses.fields(ReconstructionTask)
        if f.name != "input_size"
    }
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ConfigError(f"task 'reconstruction' has no option task.{unknown[0]}")
    return ml_collections.ConfigDict({"name": "reconstruction", **options, **overrides})


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown task.{key} '{value}'; known: {', '.join(choices)}")


def _per_example(values: jax.Array) -> jax.Array:
    """Sum over every axis but the first (pixels -> one value per example)."""
    return jnp.sum(values.reshape(values.shape[0], -1), axis=-1)


def _masked(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over the real examples of per-example (or per-pixel, summed per example) values."""
    return jnp.sum(_per_example(values[..., None]) * mask)


def _reconstruction(outputs: jax.Array, aux: dict) -> jax.Array:
    """Pixel means: a gaussian decoder's outputs as they are, else sigmoid of the logits."""
    return outputs if "logscale" in aux else jax.nn.sigmoid(outputs)


def _bce(outputs: jax.Array, aux: dict, x: jax.Array) -> jax.Array:
    """Per-pixel binary cross-entropy of the reconstruction against x."""
    if "logscale" not in aux:
        return optax.sigmoid_binary_cross_entropy(outputs, x)
    p = jnp.clip(outputs, _BCE_EPS, 1 - _BCE_EPS)
    return -(x * jnp.log(p) + (1 - x) * jnp.log1p(-p))


def _log_likelihood(outputs: jax.Array, aux: dict, x: jax.Array) -> jax.Array:
    """Per-pixel log p(x|z): Gaussian with the decoder's scale, else Bernoulli of the logits."""
    if "logscale" in aux:
        return ae.gaussian_log_density(x, outputs, 2.0 * aux["logscale"])
    return ae.bernoulli_log_likelihood(outputs, x)


def _build_reconstruction(options: dict[str, Any], info: TaskData) -> ReconstructionTask:
    return ReconstructionTask.from_config(options, input_size=info.input_size)


ENTRIES = {"reconstruction": TaskEntry(_build_reconstruction)}  # from_config checks its own options
