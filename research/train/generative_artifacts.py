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
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import data
from research.analysis import anomaly
from research.data.subsets import labels_of
from research.errors import ConfigError
from research.tasks import ReconstructionTask
from research.tasks import autoencoding as ae
from research.train.artifacts import embed, plot_embedding
from research.train.setup import Run
from research.train.state import eval_params, model_variables

SPLITS = ("train", "eval", "test")
COLUMNS = 10  # images per row of the reconstruction grid and interpolation strips
SAMPLES = 40  # prior samples drawn by a VAE
STEPS = 8  # interpolation points between (and including) the two codes


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


def write_artifacts(
    run: Run, state: Any, directory: Path, *, plots: bool
) -> tuple[list[Path], dict[str, Any]]:
    """Compute the summary entries (see the module docstring) and, with `plots`, write the
    figures into `directory`; returns (figures written, summary entries)."""
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
    figures = _figures(run, fn, variables, passes, directory, key, anomalous) if plots else []
    return [f for f in figures if f is not None], summary


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
        recon = _pixels(outputs.reshape(x.shape), "logscale" in aux)
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


def _pixels(outputs: jax.Array, gaussian: bool) -> jax.Array:
    """Pixel means from decoder outputs: a gaussian decoder's as they are, else sigmoid."""
    return outputs if gaussian else jax.nn.sigmoid(outputs)


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

    x, y = _flat(train["latent"]), train["label"]
    seen = np.isin(test["label"], np.unique(y))
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    with threadpool_limits(1):  # next to XLA's thread pools (see artifacts.embed)
        probe.fit(x, y)
        return {
            "probe/train_accuracy": float(probe.score(x, y)),
            "probe/test_accuracy": float(
                probe.score(_flat(test["latent"])[seen], test["label"][seen])
            ),
        }


def _flat(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1).astype(np.float64)


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


# -- figures ----------------------------------------------------------------------------------


def _figures(
    run: Run,
    fn: Any,
    variables: dict,
    passes: dict,
    directory: Path,
    key: jax.Array,
    anomalous: list,
) -> list[Path | None]:
    test = passes["test"]
    decode = _decode_fn(run.model)
    figures = [
        _reconstruction_figure(run, fn, variables, test, directory, key),
        _interpolation_figure(variables, decode, test, directory),
        _arithmetic_figure(variables, decode, test, directory),
        _latent_map(run, test, directory),
    ]
    if run.task.vae:
        samples = run.model.apply(variables, SAMPLES, method="generate", rngs={"sample": key})
        samples = np.asarray(samples)
        rows = [("prior", samples[i : i + COLUMNS]) for i in range(0, SAMPLES, COLUMNS)]
        figures.append(image_grid(rows, directory / "prior_samples.png"))
    if anomalous and "pca_score" in test:
        figures.append(_score_histograms(run, passes, anomalous, directory))
    return figures


def _decode_fn(model: Any):
    """A jitted `(variables, codes) -> pixel means`."""
    gaussian = getattr(model, "likelihood", "bernoulli") == "gaussian"
    return jax.jit(lambda v, z: _pixels(model.apply(v, z, method="decode"), gaussian))


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
    latents = _flat(test["latent"][:n])
    if n < 4 or not np.isfinite(latents).all() or np.ptp(latents, axis=0).max() == 0:
        print("no latent map: too few test examples, or constant or non-finite latents")
        return None
    coords = embed(latents, seed=run.config.seed)
    return plot_embedding(coords, test["label"][:n], directory / "test_latent_map.png", "latents")


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
    return _save(fig, directory / "anomaly_scores.png")


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
    return _save(fig, path)


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


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
