"""What an image classifier's run leaves behind besides its metrics: per-class precision, recall
and F1 of the test pass, a 2-D embedding (PCA and t-SNE) of its pre-logit features, Grad-CAM
heatmaps of a few test images (each image beside its overlay, both enlarged to about
`DISPLAY_SIZE` pixels), and eval accuracy against the step and the wall time.

Grad-CAM needs no change to model code: while the model runs, `flax.linen.intercept_methods`
adds a zero perturbation to the output of the target top-level module, and the gradient of the
predicted class's logit with respect to that perturbation is the gradient with respect to the
feature map. Everything runs on the host's copy of the evaluation parameters, the model in eval
mode, on at most a few thousand test examples, so it takes seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from etils import epath
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import data, storage
from research.analysis import collect
from research.errors import ConfigError
from research.tasks import ClassificationTask
from research.train.extension import Extension
from research.train.setup import Run
from research.train.state import eval_params, model_variables

PER_CLASS_FIELDS = ("class", "precision", "recall", "f1", "support")
STAGE = re.compile(r"stage(\d+)")  # the models' top-level stages: stage1, stage2, ...
# Grad-CAM panels are drawn about this many pixels a side: an 8x8 digit shown at its own
# resolution (or smoothed by matplotlib) is an unreadable wash of colour.
DISPLAY_SIZE = 128
HEAT_CMAP, HEAT_OPACITY = "jet", 0.5  # the usual Grad-CAM colours, half see-through


@dataclasses.dataclass(frozen=True)
class GradCam:
    """Grad-CAM of a batch: channel weights (B, C), the map at the layer's resolution (B, h, w),
    the map upsampled to the image and scaled to [0, 1] per image (B, H, W), predicted classes."""

    weights: np.ndarray
    coarse: np.ndarray
    maps: np.ndarray
    predicted: np.ndarray


def wanted(run: Run) -> bool:
    """Whether the end of `run` writes artifacts: enabled, plots on, a classification task."""
    c = run.config
    enabled = c.evaluation.artifacts and c.tracking.plots
    return bool(enabled) and isinstance(run.task, ClassificationTask)


def check_config(run: Run) -> None:
    """Refuse an `evaluation.gradcam_layer` that is no top-level module with an image-shaped
    output, before anything is written (the artifacts are made only after training)."""
    layer = run.config.evaluation.gradcam_layer
    if not layer or not wanted(run):
        return
    inputs = _sample_inputs(run)
    if inputs.ndim != 4:  # no images, no Grad-CAM: the key has nothing to act on
        return
    modules = _top_level_modules(run.optimizer.table)
    if layer not in modules:
        raise ConfigError(
            f"evaluation.gradcam_layer='{layer}' is no top-level module of the model "
            f"(modules: {', '.join(modules)})"
        )
    variables = jax.eval_shape(lambda: run.model.init(jax.random.PRNGKey(0), inputs, train=False))
    shape = _feature_shape(run.model, variables, inputs, layer)
    if len(shape) != 4:
        raise ConfigError(
            f"evaluation.gradcam_layer='{layer}' outputs shape {shape}; Grad-CAM needs a "
            "(batch, height, width, channels) feature map"
        )


def write_artifacts(
    run: Run,
    state: Any,
    directory: Path,
    *,
    confusion: np.ndarray,
    rows: Sequence[dict] = (),
) -> tuple[list[Path], dict[str, Any]]:
    """Write the artifacts of the final test pass into `directory` (the run's plots/).

    `confusion` is the test confusion matrix (rows: true class), `rows` the run's metric
    records. Returns the figures written and the summary entries (`test/per_class`). Embedding
    and Grad-CAM figures need image inputs (rank-4 batches); the embedding also needs a model
    that reports `aux["pre_logits"]`, Grad-CAM a `stage<N>` module or `gradcam_layer`.
    """
    c = run.config.evaluation
    table = per_class_metrics(confusion)
    write_per_class(table, directory / "test_per_class")
    figures = [accuracy_vs_time(rows, directory / "accuracy_vs_time.png")]
    count = max(c.embedding_examples, c.gradcam_examples)
    if count > 0 and _sample_inputs(run).ndim == 4:
        variables = run.par.to_host(model_variables(state, eval_params(state)))
        examples = _test_examples(run, variables, count)
        figures.append(_embedding_figure(run, examples, directory))
        figures.append(_gradcam_figure(run, variables, examples, directory))
    return [f for f in figures if f is not None], {"test/per_class": table}


# -- per-class metrics ------------------------------------------------------------------------


def per_class_metrics(confusion: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of every class from a confusion matrix (rows: true
    class, columns: predicted); a ratio with a zero denominator is 0, as in sklearn."""
    confusion = np.asarray(confusion, np.float64)
    true_pos = np.diag(confusion)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = _ratio(true_pos, predicted)
    recall = _ratio(true_pos, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return [
        {"class": k, "precision": p, "recall": r, "f1": f, "support": int(s)}
        for k, (p, r, f, s) in enumerate(
            zip(precision.tolist(), recall.tolist(), f1.tolist(), support, strict=True)
        )
    ]


def write_per_class(table: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """`<stem>.md` (a table, 4 decimals) and `<stem>.csv` (full precision); their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(PER_CLASS_FIELDS) + " |", "|" + "---|" * len(PER_CLASS_FIELDS)]
    for row in table:
        cells = [f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in row]
        lines.append("| " + " | ".join(cells) + " |")
    out = io.StringIO()
    writer = csv.DictWriter(out, PER_CLASS_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    csv_path.write_text(out.getvalue(), encoding="utf-8")
    return [md, csv_path]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


# -- accuracy against time --------------------------------------------------------------------


def accuracy_vs_time(rows: Sequence[dict], path: Path) -> Path | None:
    """Eval accuracy against the step and the wall time (two panels); None if never evaluated."""
    run = collect.FinishedRun(path.parent, {}, {}, list(rows))
    return collect.plot_convergence({(): [run]}, [], "eval/accuracy", path)


# -- test examples and features ---------------------------------------------------------------


def _sample_inputs(run: Run) -> np.ndarray:
    """The model input for one training example, with a batch axis of 1."""
    sample = run.transform(run.sources["train"][0])
    return np.asarray(run.task.inputs({k: np.asarray(v)[None] for k, v in sample.items()}))


def _test_examples(run: Run, variables: dict, count: int) -> dict[str, np.ndarray]:
    """The first `count` test examples through the eval pipeline: model inputs, labels, logits
    and (when the model reports them) pre-logit features.

    The model runs on each fixed-size eval batch, so it compiles once.
    """
    apply = jax.jit(lambda v, x: run.model.apply(v, x, train=False))
    parts: dict[str, list] = {"inputs": [], "label": [], "logits": [], "pre_logits": []}
    seen = 0
    batches = data.eval_batches(
        run.sources["test"], global_batch_size=run.config.eval_batch_size, transform=run.transform
    )
    for batch in batches:
        real = batch["mask"] > 0
        inputs = np.asarray(run.task.inputs(batch))
        logits, aux = apply(variables, inputs)
        parts["inputs"].append(inputs[real])
        parts["label"].append(batch["label"][real])
        parts["logits"].append(np.asarray(logits)[real])
        if "pre_logits" in aux:
            parts["pre_logits"].append(np.asarray(aux["pre_logits"], np.float32)[real])
        seen += int(real.sum())
        if seen >= count:
            break
    return {k: np.concatenate(v)[:count] for k, v in parts.items() if v}


# -- embedding --------------------------------------------------------------------------------


def embed(features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """2-D PCA and t-SNE coordinates of `features` (n, d); t-SNE's perplexity is capped below
    the sample count (sklearn requires it) and its seed fixed, so a rerun draws the same plot."""
    from sklearn.decomposition import PCA  # noqa: PLC0415 (only runs that write artifacts)
    from sklearn.manifold import TSNE  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 (a dependency of sklearn)

    n = features.shape[0]
    features = features.reshape(n, -1).astype(np.float64)
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: next to XLA's thread pools, t-SNE's threads were measured 40x slower
    # (20 s instead of 0.5 s for 120 points on 2 cores).
    with threadpool_limits(1):
        return {"PCA": PCA(2).fit_transform(features), "t-SNE": tsne.fit_transform(features)}


def plot_embedding(
    coords: dict[str, np.ndarray],
    labels: np.ndarray,
    path: Path,
    subject: str = "pre-logit features",
) -> Path:
    """Side-by-side scatter plots of each 2-D embedding of `subject`, coloured by class."""
    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20"]
    fig = Figure(figsize=(5 * len(coords), 4.4))
    axes = fig.subplots(1, len(coords), squeeze=False)[0]
    for ax, (name, xy) in zip(axes, coords.items(), strict=True):
        for i, k in enumerate(classes):
            chosen = labels == k
            ax.scatter(*xy[chosen].T, s=8, color=cmap(i % cmap.N), label=str(k), alpha=0.8)
        ax.set_title(f"{name} of {subject} ({labels.size} test examples)")
        ax.set_xticks([])
        ax.set_yticks([])
    if classes.size <= 20:
        ax.legend(
            title="class", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5)
        )
    return _save(fig, path)


def _embedding_figure(run: Run, examples: dict, directory: Path) -> Path | None:
    n = min(run.config.evaluation.embedding_examples, len(examples["label"]))
    if "pre_logits" not in examples or n < 4:  # t-SNE needs a few points to mean anything
        return None
    features = examples["pre_logits"][:n].reshape(n, -1)
    if not np.isfinite(features).all() or np.ptp(features, axis=0).max() == 0:
        # Identical (e.g. all-dead ReLU) or non-finite features have no 2-D map; t-SNE would
        # divide by their zero spread.
        print("no embedding plot: the pre_logits features are constant or not finite")
        return None
    coords = embed(features, seed=run.config.seed)
    return plot_embedding(coords, examples["label"][:n], directory / "test_embedding.png")


# -- Grad-CAM ---------------------------------------------------------------------------------


def gradcam_layer(model_params: dict, configured: str | None) -> str | None:
    """The configured Grad-CAM module, else the last top-level `stage<N>` (None: no stages)."""
    if configured:
        return configured
    stages = [(int(m[1]), name) for name in model_params if (m := STAGE.fullmatch(name))]
    return max(stages)[1] if stages else None


def grad_cam(model: nn.Module, variables: dict, images: np.ndarray, layer: str) -> GradCam:
    """Grad-CAM of the predicted class at the output of top-level module `layer`.

    The gradient of the class logit with respect to the feature map A is averaged over space
    into one weight per channel; the map is ReLU(sum_c w_c A_c), upsampled bilinearly to the
    image size. The model runs in eval mode, unchanged.
    """
    images = jnp.asarray(images)
    shape = _feature_shape(model, variables, images, layer)
    score = _perturbed_score(model, layer)
    grad_fn = jax.jit(jax.grad(score, has_aux=True))
    grads, (features, predicted) = grad_fn(jnp.zeros(shape, jnp.float32), variables, images)
    weights = jnp.mean(grads, axis=(1, 2))
    coarse = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features.astype(jnp.float32), weights))
    fine = jax.image.resize(coarse, (*coarse.shape[:1], *images.shape[1:3]), "bilinear")
    peak = jnp.max(fine, axis=(1, 2), keepdims=True)
    maps = jnp.where(peak > 0, fine / jnp.where(peak > 0, peak, 1.0), 0.0)
    return GradCam(*(np.asarray(a) for a in (weights, coarse, maps, predicted)))


def _perturbed_score(model: nn.Module, layer: str):
    """`(delta, variables, images) -> (sum of predicted-class logits, (features, predicted))`
    with `delta` added to the output of top-level module `layer`."""

    def score(delta: jax.Array, variables: dict, images: jax.Array) -> tuple:
        captured = {}

        def perturb(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path == (layer,):
                captured["features"] = out
                return out + delta.astype(out.dtype)
            return out

        with nn.intercept_methods(perturb):
            logits, _ = model.apply(variables, images, train=False)
        if "features" not in captured:
            raise ConfigError(f"evaluation.gradcam_layer='{layer}' was never called by the model")
        predicted, chosen = _predicted_logit(logits)
        return jnp.sum(chosen), (captured["features"], predicted)

    return score


def _predicted_logit(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Predicted class and its logit per example; with one output unit (a sigmoid), class 1's
    logit is z and class 0's is -z (the two-class softmax with logits (0, z), up to a shift)."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        z = logits[:, 0]
        predicted = (jax.lax.stop_gradient(z) > 0).astype(jnp.int32)
        return predicted, jnp.where(predicted == 1, z, -z)
    predicted = jnp.argmax(jax.lax.stop_gradient(logits), -1)
    return predicted, jnp.take_along_axis(logits, predicted[:, None], axis=1)[:, 0]


def _feature_shape(model: nn.Module, variables: Any, images: Any, layer: str) -> tuple:
    """The output shape of `layer` for `images`, traced abstractly (nothing is computed)."""
    score = _perturbed_score(model, layer)
    return tuple(jax.eval_shape(score, jnp.float32(0), variables, images)[1][0].shape)


def plot_gradcam(
    images: np.ndarray,
    cam: GradCam,
    labels: np.ndarray,
    path: Path,
    *,
    layer: str | None = None,
    columns: int = 4,
) -> Path:
    """The Grad-CAM figure (see `gradcam_figure`) saved as a PNG at `path`."""
    fig = gradcam_figure(images, cam, labels, layer=layer, columns=columns)
    return storage.save_figure(fig, path, dpi=100)


def gradcam_figure(
    images: np.ndarray,
    cam: GradCam,
    labels: np.ndarray,
    *,
    layer: str | None = None,
    columns: int = 4,
    size: int = DISPLAY_SIZE,
) -> Figure:
    """For each image, two panels: the image enlarged for display (titled with the true and
    predicted class) and its Grad-CAM overlay (`gradcam_overlay`); `columns` images a row."""
    n = images.shape[0]
    cols = min(columns, n)
    rows = -(-n // cols)
    # Constrained layout makes room for the colour bar; tight_layout cannot place one.
    fig = Figure(figsize=(3.4 * cols + 0.8, 1.9 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        shown, overlay = gradcam_overlay(images[i], cam.coarse[i], size)
        left, right = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        left.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
        left.set_title(f"true {labels[i]} / pred {cam.predicted[i]}", fontsize=8)
        right.imshow(overlay, interpolation="nearest")
        # An all-zero map (no location raised the class score) would read as "cold everywhere".
        right.set_title("Grad-CAM" if cam.coarse[i].max() > 0 else "Grad-CAM: 0", fontsize=8)
    bar = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), HEAT_CMAP)
    fig.colorbar(bar, ax=axes, shrink=0.8, label="fraction of the map's peak")
    h, w = cam.coarse.shape[1:]
    source = f"{layer}'s" if layer else "the layer's"
    fig.suptitle(
        f"Grad-CAM of the predicted class from {source} {h}x{w} feature map, "
        "upsampled bilinearly to the image",
        fontsize=9,
    )
    return fig


def gradcam_overlay(
    image: np.ndarray, coarse: np.ndarray, size: int = DISPLAY_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """`image` (H, W, C) enlarged for display, and the Grad-CAM overlay at the same resolution.

    The image is enlarged by the integer factor that brings its longer side nearest to `size`
    (never shrunk), nearest-neighbour, so its pixels stay sharp squares. The coarse map (h, w)
    is upsampled bilinearly straight to that resolution, scaled to [0, 1] by its peak, coloured
    and blended over the grayscale image. Returns (image: 2-D or RGB, overlay: RGB) in [0, 1].
    """
    image = _displayable(image)
    factor = max(1, round(size / max(image.shape[:2])))
    shown = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    gray = shown if shown.ndim == 2 else shown @ np.array([0.299, 0.587, 0.114])  # luma
    heat = upsample_map(coarse, gray.shape)
    colour = matplotlib.colormaps[HEAT_CMAP](heat)[..., :3]
    overlay = (1.0 - HEAT_OPACITY) * gray[..., None] + HEAT_OPACITY * colour
    return shown, np.clip(overlay, 0.0, 1.0)  # colormap floats can exceed 1 by an ulp


def upsample_map(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (h, w) map resized bilinearly to `shape`, as a fraction of the coarse map's peak (all
    zeros when the map is). Upsampling by an integer factor keeps the map's mean; every value
    is a blend of neighbouring cells, so none exceeds 1."""
    coarse = np.asarray(coarse, np.float32)
    fine = np.asarray(jax.image.resize(jnp.asarray(coarse), shape, "bilinear"))
    peak = coarse.max()
    return fine / peak if peak > 0 else np.zeros_like(fine)


def _displayable(image: np.ndarray) -> np.ndarray:
    """An image scaled to [0, 1] per image (inputs may be normalised), 2-D if single-channel."""
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image[..., 0] if image.shape[-1] == 1 else image[..., :3]


def _gradcam_figure(run: Run, variables: dict, examples: dict, directory: Path) -> Path | None:
    n = min(run.config.evaluation.gradcam_examples, len(examples["label"]))
    layer = gradcam_layer(variables["params"], run.config.evaluation.gradcam_layer)
    if not n or layer is None:
        return None
    cam = grad_cam(run.model, variables, examples["inputs"][:n], layer)
    path = directory / "test_gradcam.png"
    return plot_gradcam(examples["inputs"][:n], cam, examples["label"][:n], path, layer=layer)


def _top_level_modules(table: Sequence[dict]) -> list[str]:
    """Top-level module names of the parameter table, in order of first appearance."""
    return list(dict.fromkeys(row["path"].split("/", 1)[0] for row in table))


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    return storage.save_figure(fig, path, dpi=100)


class ClassificationReport(Extension):
    """Per-class metrics, the embedding and Grad-CAM of a classification run."""

    def applies(self, run: Run) -> bool:
        return wanted(run)

    def check(self, run: Run) -> None:
        check_config(run)

    def finish(
        self,
        run: Run,
        state: Any,
        directory: epath.Path,
        test_sums: dict[str, np.ndarray],
        rows: Sequence[dict],
    ) -> tuple[list[epath.Path], dict[str, Any]]:
        return write_artifacts(run, state, directory, confusion=test_sums["confusion"], rows=rows)
