"""Figures written into a run's `plots/`: learning curves, gradient norms, confusion matrix."""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import storage
from research.optim import layer_decay

SPLIT_COLORS = {"train": "C0", "eval": "C1", "test": "C2"}  # the same colour in every panel
# Metric names (the part after the split; `naive_mse`, `distill_kl` match by their last word)
# that are losses or errors: they fall over decades, so a linear axis shows them flat after the
# first few hundred steps. Accuracy-like metrics, bounded in [0, 1], stay on a linear axis.
LOSS_LIKE = (
    "loss",
    "ce",
    "bce",
    "mse",
    "rmse",
    "mae",
    "mape",
    "reconstruction",
    "kl",
    "penalty",
    "sparsity",
    "perplexity",
    "bits_per_token",
)


def is_loss_like(metric: str) -> bool:
    """Whether `metric` (`eval/loss`, `mse`, `train/distill_kl`) is a loss or an error."""
    name = metric.rpartition("/")[2]
    return any(name == word or name.endswith(f"_{word}") for word in LOSS_LIKE)


def set_metric_yscale(ax: Any, metric: str, values: Iterable[float]) -> str:
    """Log y axis for a loss-like `metric` whose finite `values` are all positive, else linear;
    returns the scale set.

    A log axis cannot show a value <= 0, and some losses are legitimately negative (a VAE's
    -ELBO under a Gaussian likelihood, a negative log-likelihood of densities), so such a curve
    falls back to linear rather than losing points. Non-finite values (a diverged run) are
    dropped by matplotlib on either scale, so they do not decide it.
    """
    values = np.asarray(list(values), np.float64)
    finite = values[np.isfinite(values)]
    scale = "log" if is_loss_like(metric) and finite.size and (finite > 0).all() else "linear"
    ax.set_yscale(scale)
    if scale == "log":
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    return scale


class _PlainLogFormatter(matplotlib.ticker.LogFormatterSciNotation):
    """Log-axis tick labels as plain numbers (0.03, 24.5): matplotlib picks which ticks to label,
    but its own labels on a curve spanning less than a decade read 2.45 x 10^1."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def learning_curves(rows: Iterable[Mapping[str, float]], path: Path) -> Path:
    """Learning curves (see `learning_curves_figure`) saved as a PNG at `path`."""
    return _save(learning_curves_figure(rows), path)


def learning_curves_figure(rows: Iterable[Mapping[str, float]]) -> Figure:
    """One panel per metric name (loss, accuracy, ...), one line per split, against the step;
    losses and errors on a log axis when positive (`set_metric_yscale`)."""
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(dict)
    for row in rows:
        for key, value in row.items():
            if key == "step" or "/" not in key:
                continue
            split, name = key.split("/", 1)
            if "/" in name:  # per-layer diagnostics (grad_norm/stage1/...) have their own plot
                continue
            xs, ys = series[name].setdefault(split, ([], []))
            xs.append(row["step"])
            ys.append(value)
    first = ("loss", "accuracy")  # the curves people look at first go top-left
    names = sorted(series, key=lambda n: (first.index(n) if n in first else len(first), n))
    cols = min(4, max(1, len(names)))
    nrows = -(-len(names) // cols) or 1
    fig = Figure(figsize=(4 * cols, 3 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for split, (xs, ys) in sorted(series[name].items()):
            marker = "o" if len(xs) < 20 else None
            ax.plot(xs, ys, marker=marker, label=split, color=SPLIT_COLORS.get(split))
        set_metric_yscale(ax, name, (y for _, ys in series[name].values() for y in ys))
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    return fig


def gradient_norms(rows: Iterable[Mapping[str, float]], path: Path) -> Path | None:
    """Gradient norm of every module over training, log scale, from the input (dark) to the head.

    Vanishing gradients show as lines of the early layers sinking decades below the head;
    exploding ones as lines shooting up. Returns None when no per-module norms were logged.
    """
    prefix = "train/grad_norm/"
    series: dict[str, tuple[list, list]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix) and value > 0:
                xs, ys = series.setdefault(key[len(prefix) :], ([], []))
                xs.append(row["step"])
                ys.append(value)
    if not series:
        return None
    depth = layer_decay.depths(f"{module}/w" for module in series)
    modules = sorted(series, key=lambda m: (depth[f"{m}/w"], m))
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, len(modules)))
    for colour, module in zip(colours, modules, strict=True):
        ax.plot(*series[module], color=colour, label=module)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient norm per module")
    ax.legend(fontsize=6, ncol=2 if len(series) > 8 else 1)
    return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, path: Path, class_names: Sequence[str] = ()) -> Path:
    """A heatmap of counts, rows = true class, columns = predicted class."""
    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    fig = Figure(figsize=(1.2 + 0.45 * n, 1 + 0.45 * n))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7, color=color)
    labels = list(class_names) or [str(i) for i in range(n)]
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    return storage.save_figure(fig, path, dpi=100)
