"""The figures of an autoencoder's or VAE's run (see research/reporting/generative.py):
inputs and reconstructions, prior samples, interpolation strips, latent arithmetic, latent maps
and anomaly-score histograms, drawn from the passes over the splits that module makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research.analysis import anomaly
from research.reporting import embedding, figures
from research.tasks import autoencoding as ae
from research.train.setup import Run

COLUMNS = 10  # images per row of the reconstruction grid and interpolation strips
SAMPLES = 40  # prior samples drawn by a VAE
STEPS = 8  # interpolation points between (and including) the two codes


def pixel_means(outputs: jax.Array, gaussian: bool) -> jax.Array:
    """Pixel means from decoder outputs: a gaussian decoder's as they are, else sigmoid."""
    return outputs if gaussian else jax.nn.sigmoid(outputs)


def flat(values: np.ndarray) -> np.ndarray:
    """(n, ...) -> (n, features) float64, as scikit-learn takes them."""
    return values.reshape(values.shape[0], -1).astype(np.float64)


def write_figures(
    run: Run,
    fn: Any,
    variables: dict,
    passes: dict,
    directory: Path,
    key: jax.Array,
    anomalous: list,
) -> list[Path | None]:
    """Every figure of the run into `directory` (None where one could not be drawn)."""
    test = passes["test"]
    decode = _decode_fn(run.model)
    drawn = [
        _reconstruction_figure(run, fn, variables, test, directory, key),
        _interpolation_figure(variables, decode, test, directory),
        _arithmetic_figure(variables, decode, test, directory),
        _latent_map(run, test, directory),
    ]
    if run.task.vae:
        samples = run.model.apply(variables, SAMPLES, method="generate", rngs={"sample": key})
        samples = np.asarray(samples)
        rows = [("prior", samples[i : i + COLUMNS]) for i in range(0, SAMPLES, COLUMNS)]
        drawn.append(image_grid(rows, directory / "prior_samples.png"))
    if anomalous and "pca_score" in test:
        drawn.append(_score_histograms(run, passes, anomalous, directory))
    return drawn


def _decode_fn(model: Any):
    """A jitted `(variables, codes) -> pixel means`."""
    gaussian = getattr(model, "likelihood", "bernoulli") == "gaussian"
    return jax.jit(lambda v, z: pixel_means(model.apply(v, z, method="decode"), gaussian))


def _one_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first example of each class (in label order), then the next examples, up
    to `count`: a grid that shows every class."""
    firsts = np.unique(labels, return_index=True)[1]
    rest = np.setdiff1d(np.arange(labels.size), firsts)
    return np.concatenate([firsts, rest])[:count]


def _reconstruction_figure(
    run: Run, fn: Any, variables: dict, test: dict, directory: Path, key: jax.Array
) -> Path:
    """Inputs over reconstructions; noisy / denoised / clean for a denoising run."""
    chosen = _one_per_class(test["label"], COLUMNS)
    clean = test["image"][chosen]
    task = run.task
    if task.corruption == "none":
        rows = [("input", clean), ("reconstruction", test["recon"][chosen])]
    else:
        noisy = np.asarray(
            ae.corrupt(jnp.asarray(clean), key, task.corruption, task.corruption_amount)
        )
        denoised = np.asarray(fn(variables, jnp.asarray(noisy), key)["recon"])
        rows = [(f"{task.corruption} input", noisy), ("denoised", denoised), ("clean", clean)]
    return image_grid(rows, directory / "test_reconstructions.png")


def _interpolation_figure(variables: dict, decode, test: dict, directory: Path) -> Path | None:
    """Rows of decoded codes on the segment between the latents of two test images of different
    classes (class c and c + 5), the real images at both ends."""
    classes = np.unique(test["label"])
    if classes.size < 2:
        return None
    rows = []
    for c in classes[: min(3, classes.size)]:
        other = classes[(np.searchsorted(classes, c) + classes.size // 2) % classes.size]
        a = int(np.flatnonzero(test["label"] == c)[0])
        b = int(np.flatnonzero(test["label"] == other)[0])
        t = np.linspace(0.0, 1.0, STEPS)[:, None]
        codes = (1 - t) * test["latent"][a] + t * test["latent"][b]
        decoded = np.asarray(decode(variables, jnp.asarray(codes, jnp.float32)))
        ends = (test["image"][[a]], decoded, test["image"][[b]])
        rows.append((f"{c} -> {other}", np.concatenate(ends)))
    return image_grid(rows, directory / "test_interpolation.png")


def latent_arithmetic(
    latents: np.ndarray, labels: np.ndarray, index: int, target: int
) -> np.ndarray:
    """z(x) - mean z(class of x) + mean z(class `target`): example `index` moved from its class
    to `target` by the difference of the two classes' mean latents (means over `latents`)."""
    source = labels[index]
    return (
        latents[index]
        - latents[labels == source].mean(axis=0)
        + latents[labels == target].mean(axis=0)
    )


def _arithmetic_figure(variables: dict, decode, test: dict, directory: Path) -> Path | None:
    """For a few test images x of class a: x, its reconstruction, the decoded mean latents of
    class a and b = a + 1, and z(x) - mean z(a) + mean z(b) decoded (class means over test)."""
    labels, latents = test["label"], test["latent"]
    classes = np.unique(labels)
    if classes.size < 2:
        return None
    rows = []
    for c in classes[: min(4, classes.size)]:
        target = classes[(np.searchsorted(classes, c) + 1) % classes.size]
        i = int(np.flatnonzero(labels == c)[0])
        codes = np.stack(
            [
                latents[i],
                latents[labels == c].mean(axis=0),
                latents[labels == target].mean(axis=0),
                latent_arithmetic(latents, labels, i, target),
            ]
        )
        decoded = np.asarray(decode(variables, jnp.asarray(codes, jnp.float32)))
        rows.append((f"a={c}, b={target}", np.concatenate([test["image"][[i]], decoded])))
    titles = ["x", "decoded z(x)", "mean z(a)", "mean z(b)", "z(x) - a + b"]
    return image_grid(rows, directory / "test_latent_arithmetic.png", titles=titles)


def _latent_map(run: Run, test: dict, directory: Path) -> Path | None:
    """PCA and t-SNE of the test latents, coloured by label (as the classifiers' embedding)."""
    n = min(run.config.evaluation.embedding_examples, test["label"].size)
    latents = flat(test["latent"][:n])
    if n < 4 or not np.isfinite(latents).all() or np.ptp(latents, axis=0).max() == 0:
        print("no latent map: too few test examples, or constant or non-finite latents")
        return None
    coords = embedding.embed(latents, seed=run.config.seed)
    path = directory / "test_latent_map.png"
    return embedding.plot_embedding(coords, test["label"][:n], path, "latents")


def _score_histograms(run: Run, passes: dict, anomalous: list, directory: Path) -> Path:
    """Histograms of the test scores of normal and anomalous examples, model and PCA, with the
    validation-chosen thresholds."""
    test = passes["test"]
    is_anomaly = np.isin(test["label"], anomalous)
    model_name = "negative ELBO (nats)" if run.task.vae else "reconstruction MSE"
    fig = Figure(figsize=(10, 3.6))
    for ax, name, title in zip(
        fig.subplots(1, 2),
        ("score", "pca_score"),
        (model_name, "PCA reconstruction MSE"),
        strict=True,
    ):
        scores = test[name]
        bins = np.linspace(scores.min(), scores.max(), 40)
        ax.hist(scores[~is_anomaly], bins, alpha=0.6, density=True, label="normal")
        ax.hist(scores[is_anomaly], bins, alpha=0.6, density=True, label=f"anomalous {anomalous}")
        threshold, _ = anomaly.best_f1_threshold(
            passes["eval"][name], np.isin(passes["eval"]["label"], anomalous)
        )
        ax.axvline(threshold, color="k", linestyle="--", label="threshold (validation F1)")
        ax.set_title(f"test {title}")
        ax.legend(fontsize=7)
    return figures.save(fig, directory / "anomaly_scores.png")


def image_grid(
    rows: list[tuple[str, np.ndarray]], path: Path, titles: list[str] | None = None
) -> Path:
    """A grid of images in [0, 1], one row per (name, images) pair, named on the left;
    `titles` label the columns."""
    cols = max(len(images) for _, images in rows)
    fig = Figure(figsize=(1.1 * cols + 1, 1.1 * len(rows) + 0.3))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                _show(ax, images[c])
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=8)
    for c, title in enumerate(titles or []):
        axes[0, c].set_title(title, fontsize=8)
    return figures.save(fig, path)


def _show(ax: Any, image: np.ndarray) -> None:
    """One image, its values clipped to [0, 1] (no per-image rescaling, so reconstructions are
    comparable with their inputs)."""
    image = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    if image.ndim == 1:  # a flat input: show it square if it is one
        side = int(round(np.sqrt(image.size)))
        image = image.reshape(side, side) if side * side == image.size else image[None]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
