"""Scaling laws: per-run parameters, data and compute, and a power-law fit with bootstrap CIs.

The law is L(x) = a * x**(-alpha) + c, with c the irreducible loss. It is fitted by least squares
on log L (relative errors: small and large losses weigh alike, as on a log-log plot), with x
rescaled by its geometric mean so the optimizer sees numbers near 1. Confidence intervals come
from a percentile bootstrap over runs (resampled with replacement, seeded, so reruns agree).

Per-run quantities:
- params: `params/count` in summary.json when recorded; else the sum of prod(shape) over the rows
  of the workdir's `param_rules.txt` (the resolved per-parameter table every run writes). This
  avoids rebuilding the model, which needs the data pipeline and devices.
- data: examples seen = batch_size * total_steps from config.json.
- compute: `compute/flops_per_step` * total_steps when summary.json records it; otherwise the
  standard estimate 6 * params * examples (forward + backward of a dense network).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched
from scipy import optimize

from research import rundir, storage
from research.analysis.collect import FinishedRun, is_number
from research.errors import ConfigError, WorkdirError
from research.reporting import figures

AXES = ("params", "data", "compute")
PARAM_RULES_FILE = rundir.PARAM_RULES
PARAMS_KEY = "params/count"
FLOPS_KEY = "compute/flops_per_step"
LEVEL = 0.95


def count_params_from_rules(path: str | Path) -> int:
    """Total parameters listed in a param_rules.txt (header, then `path shape group ...` rows;
    shape is `AxB`, or `()` for a scalar)."""
    lines = Path(path).read_text().splitlines()
    total = 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        shape = fields[1]
        total += 1 if shape == "()" else math.prod(int(d) for d in shape.split("x"))
    return total


def param_count(run: FinishedRun) -> int:
    """The run's parameter count (summary.json if recorded, else its param_rules.txt)."""
    if is_number(run.summary.get(PARAMS_KEY)):
        return int(run.summary[PARAMS_KEY])
    rules_path = run.path / PARAM_RULES_FILE
    if not rules_path.is_file():
        raise WorkdirError(f"{run.path}: no {PARAMS_KEY} in summary.json and no {PARAM_RULES_FILE}")
    return count_params_from_rules(rules_path)


def examples_seen(run: FinishedRun) -> int:
    """Training examples processed: global batch size times the resolved number of steps."""
    batch, steps = run.config.get("batch_size"), run.config.get("total_steps")
    if not (is_number(batch) and is_number(steps)):
        raise WorkdirError(f"{run.path}: config.json lacks batch_size or total_steps")
    return int(batch) * int(steps)


def training_flops(run: FinishedRun) -> float:
    """Recorded FLOPs per step times steps, else the 6 * params * examples estimate."""
    if is_number(run.summary.get(FLOPS_KEY)):
        return float(run.summary[FLOPS_KEY]) * float(run.config["total_steps"])
    return 6.0 * param_count(run) * examples_seen(run)


def axis_values(runs: Sequence[FinishedRun], axis: str) -> np.ndarray:
    """Per-run x for a scaling axis: params, data (examples seen) or compute (FLOPs)."""
    measure = {"params": param_count, "data": examples_seen, "compute": training_flops}
    if axis not in measure:
        raise ConfigError(f"--scaling={axis!r}: must be one of {', '.join(AXES)}")
    return np.asarray([measure[axis](run) for run in runs], dtype=float)


def power_law(x: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
    """L(x) = a * x**(-alpha) + c."""
    return a * np.power(x, -alpha) + c


@dataclasses.dataclass(frozen=True)
class Fit:
    """Fitted law and, when bootstrapped, 95% intervals per parameter (`name -> (low, high)`)."""

    a: float
    alpha: float
    c: float
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The fitted curve at x."""
        return power_law(np.asarray(x, dtype=float), self.a, self.alpha, self.c)


def _initial(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Starting point: c below the smallest loss, then a line through log(y - c) vs log u."""
    c0 = 0.5 * float(y.min())
    slope, intercept = np.polyfit(np.log(u), np.log(y - c0), 1)
    return np.array([math.exp(intercept), max(-slope, 1e-3), c0])


def _fit_scaled(u: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """(a, alpha, c) for x rescaled to u; bounds keep a, c >= 0 so log L is always defined."""

    def residuals(p: np.ndarray) -> np.ndarray:
        return np.log(power_law(u, *p)) - np.log(y)

    start = _initial(u, y) if start is None else start
    bounds = ([1e-12, -10.0, 0.0], [np.inf, 10.0, np.inf])
    return optimize.least_squares(residuals, start, bounds=bounds, x_scale="jac").x


def _check(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape or len(np.unique(x)) < 3:
        raise ConfigError("a power law with an offset needs runs at >= 3 distinct sizes")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ConfigError("scaling fits need positive sizes and positive, finite metric values")


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Least-squares fit of L(x) = a x^-alpha + c on log L (without intervals)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check(x, y)
    scale = math.exp(float(np.mean(np.log(x))))  # geometric mean: u = x / scale is near 1
    a_u, alpha, c = _fit_scaled(x / scale, y)
    # a_u * (x/scale)^-alpha = (a_u * scale^alpha) * x^-alpha
    return Fit(float(a_u * scale**alpha), float(alpha), float(c))


def bootstrap(
    x: Sequence[float],
    y: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> Fit:
    """The fit plus percentile-bootstrap intervals over runs; resamples with fewer than 3
    distinct sizes cannot identify the law and are skipped."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    best = fit_power_law(x, y)
    scale = math.exp(float(np.mean(np.log(x))))
    u = x / scale
    # Warm-starting every resample at the full-data optimum makes B=1000 fits take seconds.
    start = np.array([best.a / scale**best.alpha, best.alpha, best.c])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        if len(np.unique(u[idx])) >= 3:
            a_u, alpha, c = _fit_scaled(u[idx], y[idx], start)
            draws.append((a_u * scale**alpha, alpha, c))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(draws), [tail, 100 - tail], axis=0)
    names = ("a", "alpha", "c")
    intervals = {n: (float(lo), float(hi)) for n, lo, hi in zip(names, low, high, strict=True)}
    return dataclasses.replace(best, intervals=intervals)


def plot_fit(
    x: Sequence[float], y: Sequence[float], fit: Fit, path: Path, xlabel: str, ylabel: str
) -> Path:
    """Log-log plot of the runs and the fitted law, with the exponent and its interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(x, y, label="runs", color="C0", zorder=3)
    grid = np.geomspace(x.min(), x.max(), 200)
    label = f"{fit.a:.3g} x^-{fit.alpha:.3f} + {fit.c:.3g}"
    if "alpha" in fit.intervals:
        low, high = fit.intervals["alpha"]
        label += f"  (alpha {LEVEL:.0%} CI [{low:.3f}, {high:.3f}])"
    ax.plot(grid, fit(grid), color="C1", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return figures.save(fig, storage.workdir_path(path))


def scaling_report(
    runs: Sequence[FinishedRun],
    axis: str,
    metric: str,
    outdir: Path,
    n_boot: int = 1000,
    seed: int = 0,
) -> Fit:
    """Fits `metric` against the axis over all runs reporting it; writes scaling_<axis>.png."""
    runs = [r for r in runs if is_number(r.summary.get(metric))]
    if not runs:
        raise ConfigError(f"no run has a numeric {metric!r} in summary.json")
    x = axis_values(runs, axis)
    y = np.asarray([r.summary[metric] for r in runs], dtype=float)
    fit = bootstrap(x, y, n_boot=n_boot, seed=seed)
    xlabel = {"params": "parameters", "data": "examples seen", "compute": "training FLOPs"}[axis]
    plot_fit(x, y, fit, outdir / f"scaling_{axis}.png", xlabel, metric)
    return fit
