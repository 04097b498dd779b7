"""The report of a forecast over a prepared series: the stationarity of its training period and
its forecasts against the truth.

* Stationarity: the augmented Dickey-Fuller test (research/analysis/stationarity.py) of the
  training period's target columns, for the levels, the first differences and what the model
  reads (after `data.series.log` and `data.series.difference`): printed when the run starts,
  and `train/adf_pvalue*`, `train/stationary_model*` in summary.json. Only the training period
  is tested, so the later periods stay unseen.
* Forecasts (`evaluation.artifacts`, `tracking.plots`): the test period's truth against the
  model's one-step-ahead forecasts and the baselines', plus a few multi-horizon forecasts from
  evenly spaced origins with the horizon shaded (`forecast_test.png`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research.analysis import stationarity
from research.reporting import figures
from research.reporting.report import Report
from research.reporting.sequence import DPI, apply_model, first_test_examples
from research.tasks import RegressionTask
from research.tasks.forecasting import original_units
from research.train.extension import RunEnd
from research.train.setup import Run
from research.train.state import eval_params

FORECAST_ORIGINS = 4  # multi-horizon forecasts drawn from evenly spaced test origins


def wanted(run: Run) -> bool:
    """A run on a prepared series (its training period is known), whatever its other settings:
    the stationarity entries do not depend on `evaluation.artifacts`."""
    return run.prepared.train_values is not None


def stationarity_entries(run: Run) -> dict[str, float | bool]:
    """The ADF summary entries of the run's training period (none for a period too short)."""
    s = run.config.data.series
    return stationarity.summary_entries(
        run.prepared.train_values, log=s.log, difference=s.difference
    )


class ForecastReport(Report):
    """Stationarity of the training period and forecasts against the truth of a series run."""

    def applies(self, run: Run) -> bool:
        return wanted(run)

    def check(self, run: Run) -> None:
        """Print the ADF test when the run starts (process 0), to judge the config's transforms
        (`data.series.log`, `difference`) before it trains."""
        if not wanted(run) or jax.process_index() != 0:
            return
        entries = stationarity_entries(run)
        if entries:
            print(stationarity.describe(entries), flush=True)

    def summary(self, run: Run, state: Any, rows: Sequence[dict]) -> dict[str, Any]:
        """The ADF entries (on every process, so every host's summary agrees)."""
        return stationarity_entries(run)

    def write(self, end: RunEnd) -> tuple[list[Path | None], dict[str, Any]]:
        """The forecast figure, with `evaluation.artifacts` and `plots`, of a regression task."""
        run, state = end.run, end.state
        if not (
            run.config.evaluation.artifacts and end.plots and isinstance(run.task, RegressionTask)
        ):
            return [], {}
        test = first_test_examples(run, len(run.sources["test"]))  # the whole test period
        if "truth" not in test:
            return [], {}
        params = run.par.to_host(eval_params(state))
        return [plot_forecasts(run, params, test, end.directory / "forecast_test.png")], {}


def plot_forecasts(run: Run, params: Any, test: dict[str, np.ndarray], path: Path) -> Path:
    """Truth, one-step forecasts of the model and baselines, and multi-horizon fans (column 0)."""
    outputs, _ = apply_model(run, params, test)
    pred = np.asarray(
        original_units(run.task.predictions(outputs, test), test, log=run.task.log_levels)
    )
    truth, origin = test["truth"][..., 0], test["origin"]
    horizon = truth.shape[1]
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    ax.plot(origin + 1, truth[:, 0], color="black", lw=1.5, label="truth")
    ax.plot(origin + 1, pred[:, 0, 0], color="C0", label="model (1 step ahead)")
    for name, style in (("naive", ":"), ("ar", "--")):
        ax.plot(origin + 1, test[name][:, 0, 0], style, color="gray", lw=1, label=name)
    if horizon > 1:
        for i in np.linspace(0, len(origin) - 1, FORECAST_ORIGINS).astype(int):
            steps = origin[i] + 1 + np.arange(horizon)
            ax.axvspan(steps[0] - 0.5, steps[-1] + 0.5, color="C1", alpha=0.12)
            ax.plot(steps, pred[i, :, 0], "o-", color="C1", ms=3)
        ax.plot([], [], "o-", color="C1", ms=3, label=f"model ({horizon}-step forecasts)")
    ax.set_xlabel("time step (test period)")
    ax.set_ylabel("value (original units)")
    ax.legend(fontsize=8)
    return figures.save(fig, path, dpi=DPI)
