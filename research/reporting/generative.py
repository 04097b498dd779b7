"""What an autoencoder's or VAE's run leaves behind besides its metrics.

Summary entries (with `evaluation.artifacts`):
* `test/pca_mse`: the per-pixel test MSE of PCA with as many components as the model has
  latents, fitted on the train split (clean images; the same definition as `test/mse`), the
  linear baseline an autoencoder has to beat;
* `probe/test_accuracy` (and `probe/train_accuracy`): a logistic regression (scikit-learn, fixed
  seed) on the train split's latents (a VAE's posterior means), not standardised, so a collapsed
  posterior (latents near 0 for every input) cannot look good; test examples of classes the
  train split lacks (`data.train_exclude_classes`) are left out;
* with `evaluation.anomaly_classes`: `anomaly/test_auroc` and precision, recall and F1 on test
  at the threshold that maximises F1 on the validation split (research.analysis.anomaly), for
  the model's score (per-pixel reconstruction MSE of an autoencoder, the negative ELBO in nats of
  a VAE, both on clean inputs) and for the PCA baseline's reconstruction MSE (`anomaly/pca_...`).

Figures (also needing `tracking.plots`), in plots/: test inputs and reconstructions (noisy,
denoised and clean rows for a denoising run, its corruption drawn with a fixed key), samples from
the prior (VAEs), interpolation strips in latent space between test images of two classes, a
latent arithmetic example, PCA and t-SNE maps of the test latents coloured by label, and
histograms of the anomaly scores. The model runs in eval mode on the host's copy of the
evaluation parameters; every random draw uses keys derived from the run's seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import data
from research.analysis import anomaly
from research.data.subsets import labels_of
from research.errors import ConfigError
from research.reporting.generative_figures import flat, pixel_means, write_figures
from research.reporting.report import Report
from research.tasks import ReconstructionTask
from research.tasks import autoencoding as ae
from research.train.extension import RunEnd
from research.train.setup import Run
from research.train.state import eval_params, model_variables

SPLITS = ("train", "eval", "test")


def wanted(run: Run) -> bool:
    """Whether the end of `run` computes these entries: enabled and a reconstruction task."""
    return bool(run.config.evaluation.artifacts) and isinstance(run.task, ReconstructionTask)


def check_config(run: Run) -> None:
    """Refuse `evaluation.anomaly_classes` outside a reconstruction run or naming no test label,
    before anything is written."""
    classes = [int(c) for c in run.config.evaluation.anomaly_classes]
    if not classes:
        return
    if not isinstance(run.task, ReconstructionTask):
        raise ConfigError("evaluation.anomaly_classes needs task.name='reconstruction'")
    if not run.config.evaluation.artifacts:
        raise ConfigError("evaluation.anomaly_classes needs evaluation.artifacts=True")
    present = set(labels_of(run.sources["test"]).tolist())
    missing = sorted(set(classes) - present)
    if missing:
        raise ConfigError(
            f"evaluation.anomaly_classes: class {missing[0]} is not in the test split"
        )
    if present <= set(classes):
        raise ConfigError("evaluation.anomaly_classes leaves no normal test class")


# -- one pass over a split --------------------------------------------------------------------


def encode_split(
    run: Run, fn: Any, variables: dict, prefix: str, key: jax.Array, *, pixels: bool = True
) -> dict[str, np.ndarray]:
    """Every example of the split read as `prefix`, clean, through `fn` (see `pass_fn`):
    "image", "label", "latent" (a VAE's posterior mean), "mse" (per-pixel reconstruction MSE per
    example), "score" (the anomaly score: that MSE, or a VAE's negative ELBO with
    task.iwae_samples samples) and, with `pixels`, the reconstructions "recon". Batch i draws
    its samples with fold_in(key, i)."""
    parts: dict[str, list] = {}
    batches = data.eval_batches(
        run.sources[prefix], global_batch_size=run.config.eval_batch_size, transform=run.transform
    )
    for i, batch in enumerate(batches):
        real = batch["mask"] > 0
        out = fn(variables, jnp.asarray(batch["image"]), jax.random.fold_in(key, i))
        out = {k: np.asarray(v)[real] for k, v in out.items() if pixels or k != "recon"}
        out["image"] = np.asarray(batch["image"])[real]
        out["label"] = np.asarray(batch["label"])[real]
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def pass_fn(model: Any, task: ReconstructionTask) -> Any:
    """A jitted `(variables, clean images, key) -> {latent, recon, mse, score}`."""

    def run_model(variables: dict, x: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        outputs, aux = model.apply(variables, x, train=False, rngs={"sample": key})
        recon = pixel_means(outputs.reshape(x.shape), "logscale" in aux)
        mse = jnp.mean(jnp.square(recon - x).reshape(x.shape[0], -1), axis=-1)
        if not task.vae:
            return {"latent": aux["latent"], "recon": recon, "mse": mse, "score": mse}
        score = _negative_elbo(model, variables, aux, x, key, task.iwae_samples)
        return {"latent": aux["mean"], "recon": recon, "mse": mse, "score": score}

    return jax.jit(run_model)


def _negative_elbo(
    model: Any, variables: dict, aux: dict, x: jax.Array, key: jax.Array, k: int
) -> jax.Array:
    """-ELBO per example in nats: the reconstruction NLL averaged over k posterior samples plus
    the closed-form KL to the prior (the eval/elbo definition, per example)."""
    mean, logvar = aux["mean"], aux["logvar"]
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (k, *mean.shape), mean.dtype)
    decoded = model.apply(variables, z.reshape(-1, mean.shape[-1]), method="decode")
    decoded = decoded.reshape((k, *x.shape))
    if "logscale" in aux:
        log_lik = ae.gaussian_log_density(x, decoded, 2.0 * aux["logscale"])
    else:
        log_lik = ae.bernoulli_log_likelihood(decoded, x)
    nll = -jnp.mean(jnp.sum(log_lik.reshape(k, x.shape[0], -1), axis=-1), axis=0)
    return nll + jnp.sum(ae.gaussian_kl(mean, logvar), axis=-1)


def _latent_size(run: Run) -> int:
    return int(run.model.latent_size)


# -- baselines and probes ---------------------------------------------------------------------


def pca_errors(train: np.ndarray, test: np.ndarray, components: int) -> np.ndarray:
    """Per-example mean squared error (per pixel) of PCA with `components` components fitted
    on `train`, reconstructing `test` (both (n, ...) arrays of the same example shape)."""
    from sklearn.decomposition import PCA  # noqa: PLC0415 (only runs that write artifacts)

    train = train.reshape(train.shape[0], -1).astype(np.float64)
    test = test.reshape(test.shape[0], -1).astype(np.float64)
    pca = PCA(components, svd_solver="full").fit(train)
    recon = pca.inverse_transform(pca.transform(test))
    return np.mean(np.square(recon - test), axis=-1)


def linear_probe(train: dict, test: dict, *, seed: int) -> dict[str, float]:
    """Train and test accuracy of a logistic regression on `train["latent"]` -> `train["label"]`
    (raw latents, no standardisation); test examples of classes absent from train are left out."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 (a dependency of sklearn)

    x, y = flat(train["latent"]), train["label"]
    seen = np.isin(test["label"], np.unique(y))
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    with threadpool_limits(1):  # next to XLA's thread pools (see embedding.embed)
        probe.fit(x, y)
        return {
            "probe/train_accuracy": float(probe.score(x, y)),
            "probe/test_accuracy": float(
                probe.score(flat(test["latent"])[seen], test["label"][seen])
            ),
        }


def _anomaly_entries(run: Run, passes: dict, anomalous: list[int]) -> dict[str, float]:
    """The model's and the PCA baseline's anomaly metrics (validation-chosen thresholds)."""
    k = _latent_size(run)
    labels = {p: np.isin(passes[p]["label"], anomalous) for p in ("eval", "test")}
    if any(v.all() or not v.any() for v in labels.values()):
        print("no anomaly metrics: the eval and test splits need normal and anomalous examples")
        return {}
    for p in ("eval", "test"):
        passes[p]["pca_score"] = pca_errors(passes["train"]["image"], passes[p]["image"], k)
    entries = {}
    for name, prefix in (("score", "anomaly/"), ("pca_score", "anomaly/pca_")):
        entries |= anomaly.report(
            passes["eval"][name], labels["eval"], passes["test"][name], labels["test"], prefix
        )
    return entries


class GenerativeReport(Report):
    """The PCA baseline, the latent probe, anomaly scores and images of a reconstruction run."""

    def applies(self, run: Run) -> bool:
        return wanted(run)

    def check(self, run: Run) -> None:
        check_config(run)

    def write(self, end: RunEnd) -> tuple[list[Path | None], dict[str, Any]]:
        """Compute the summary entries (see the module docstring) and, with `plots`, write the
        figures into `directory`."""
        run, state = end.run, end.state
        variables = run.par.to_host(model_variables(state, eval_params(state)))
        key = jax.random.PRNGKey(run.config.seed)
        fn = pass_fn(run.model, run.task)
        passes = {p: encode_split(run, fn, variables, p, key, pixels=p != "train") for p in SPLITS}
        summary: dict[str, Any] = {}
        pca_test = pca_errors(passes["train"]["image"], passes["test"]["image"], _latent_size(run))
        summary["test/pca_mse"] = float(np.mean(pca_test))
        summary |= linear_probe(passes["train"], passes["test"], seed=run.config.seed)
        anomalous = [int(c) for c in run.config.evaluation.anomaly_classes]
        if anomalous:
            summary |= _anomaly_entries(run, passes, anomalous)
        drawn = (
            write_figures(run, fn, variables, passes, end.directory, key, anomalous)
            if end.plots
            else []
        )
        return drawn, summary
