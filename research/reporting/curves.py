"""Metrics against the step (or the wall time) as figures: one run's learning curves and
per-module gradient norms (its plots/), and the curves of groups of runs that
`launch/report.py` draws from a sweep (`plot_curves`, `plot_convergence`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import storage
from research.analysis import collect
from research.optim import layer_decay
from research.reporting import figures

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


# -- one run ------------------------------------------------------------------------------------


def learning_curves(rows: Iterable[Mapping[str, float]], path: Path) -> Path:
    """Learning curves (see `learning_curves_figure`) saved as a PNG at `path`."""
    return figures.save(learning_curves_figure(rows), path)


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
    return figures.save(fig, path)


# -- groups of runs -----------------------------------------------------------------------------


def plot_curves(
    groups: Mapping[tuple, Sequence[collect.FinishedRun]],
    keys: Sequence[str],
    metric: str,
    path: Path,
) -> Path | None:
    """One line per group: the seed-mean of `metric` against the step, a loss on a log axis
    (`set_metric_yscale`). None if nothing logged."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    drawn = 0
    for values, runs in groups.items():
        steps, means = collect.mean_curve(runs, metric)
        if steps.size:
            marker = "o" if steps.size < 20 else None
            label = f"{collect.group_label(keys, values)} (n={len(runs)})"
            ax.plot(steps, means, marker=marker, label=label)
            drawn += 1
    if not drawn:
        return None
    set_metric_yscale(ax, metric, (y for line in ax.get_lines() for y in line.get_ydata()))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}, mean over seeds")
    ax.legend(fontsize=7)
    return figures.save(fig, storage.workdir_path(path))


def curves_path(outdir: Path, metric: str) -> Path:
    """`<outdir>/curves_eval_accuracy.png` for `eval/accuracy`: one file per metric."""
    return outdir / f"curves_{metric.replace('/', '_')}.png"


def plot_convergence(
    groups: Mapping[tuple, Sequence[collect.FinishedRun]],
    keys: Sequence[str],
    metric: str,
    path: Path,
) -> Path | None:
    """`metric` of every run against the step (left) and the wall time (right), one line per run,
    one colour per group (its values of `keys`); a loss on a log axis (`set_metric_yscale`).
    None if no run logged the metric."""
    fig = Figure(figsize=(11, 4))
    by_step, by_time = fig.subplots(1, 2)
    drawn = 0
    for index, (values, runs) in enumerate(groups.items()):
        label = collect.group_label(keys, values) if keys else None
        for run in runs:
            steps, ys, times = collect.convergence(run, metric)
            if not steps.size:
                continue
            style = {"color": f"C{index % 10}", "marker": "o" if steps.size < 20 else None}
            by_step.plot(steps, ys, label=label, **style)
            timed = np.isfinite(times)
            by_time.plot(times[timed], ys[timed], **style)
            label, drawn = None, drawn + 1  # one legend entry per group
    if not drawn:
        return None
    plotted = [y for line in by_step.get_lines() for y in line.get_ydata()]
    for ax, xlabel in ((by_step, "step"), (by_time, "wall time of training (s)")):
        set_metric_yscale(ax, metric, plotted)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
    by_step.set_title(f"{metric} against the step")
    by_time.set_title(f"{metric} against the wall time")
    if keys:
        by_step.legend(fontsize=7)
    return figures.save(fig, storage.workdir_path(path))
