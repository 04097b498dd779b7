"""Stationarity of a series' training period: the augmented Dickey-Fuller test (statsmodels).

The material's recipe checks stationarity before windowing a series: a unit root (a p-value
above 0.05, so "not stationary") calls for differencing or a log transform. A forecasting run
reports the test on the training period only (the later periods stay unseen), for the levels,
for the first differences, and for what the model is actually given (after `data.series.log`
and `data.series.difference`), so a config's transform choice can be checked against it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from statsmodels.tsa.stattools import adfuller

from research.errors import DataError

ALPHA = 0.05  # significance level of the "stationary" verdict
_MIN_STEPS = 8  # adfuller needs a few observations beyond its lags; fewer is not a test


@dataclasses.dataclass(frozen=True)
class AdfResult:
    """One augmented Dickey-Fuller test (H0: a unit root, i.e. not stationary)."""

    statistic: float
    pvalue: float
    lags: int  # lagged differences chosen by AIC
    nobs: int  # observations used by the regression

    @property
    def stationary(self) -> bool:
        """Whether the unit root is rejected at `ALPHA`."""
        return self.pvalue < ALPHA


def adf_test(values: np.ndarray) -> AdfResult:
    """The ADF test (constant, lags chosen by AIC) of a 1-D series without gaps."""
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) < _MIN_STEPS or not np.isfinite(values).all():
        raise DataError(
            f"the ADF test needs at least {_MIN_STEPS} finite values, got {len(values)} "
            f"({int(np.sum(~np.isfinite(values)))} not finite)"
        )
    if np.ptp(values) == 0:  # the regression is singular; a constant has no unit root
        return AdfResult(statistic=-np.inf, pvalue=0.0, lags=0, nobs=len(values))
    result = adfuller(values, autolag="AIC", result_object=True)
    return AdfResult(
        statistic=float(result.statistic),
        pvalue=float(result.pvalue),
        lags=int(result.lags),
        nobs=int(result.nobs),
    )


def model_view(values: np.ndarray, *, log: bool, difference: bool) -> np.ndarray:
    """The series as the model sees it (before scaling, which does not change the test)."""
    values = np.log(values) if log else np.asarray(values, np.float64)
    return np.diff(values, axis=0) if difference else values


def summary_entries(
    train: np.ndarray, *, log: bool, difference: bool, prefix: str = "train"
) -> dict[str, float | bool]:
    """ADF p-values of a training period [N, C] (target columns): levels, first differences and
    the model's view, plus whether the model's view is stationary. One column gives plain keys
    (`train/adf_pvalue`, ...); several add the column index (`train/adf_pvalue_0`, ...).
    A period too short to test (at most `_MIN_STEPS` steps) gives no entries."""
    train = np.asarray(train, np.float64).reshape(len(train), -1)
    entries: dict[str, float | bool] = {}
    if len(train) <= _MIN_STEPS:
        return entries
    for column in range(train.shape[1]):
        suffix = "" if train.shape[1] == 1 else f"_{column}"
        series = train[:, column]
        model = adf_test(model_view(series, log=log, difference=difference))
        entries[f"{prefix}/adf_pvalue{suffix}"] = adf_test(series).pvalue
        entries[f"{prefix}/adf_pvalue_diff{suffix}"] = adf_test(np.diff(series)).pvalue
        entries[f"{prefix}/adf_pvalue_model{suffix}"] = model.pvalue
        entries[f"{prefix}/stationary_model{suffix}"] = model.stationary
    return entries


def describe(entries: dict[str, float | bool], prefix: str = "train") -> str:
    """One line for the terminal: the p-values of the first target column and a verdict."""
    key = "" if f"{prefix}/adf_pvalue" in entries else "_0"
    levels, diff, model = (
        entries[f"{prefix}/adf_pvalue{kind}{key}"] for kind in ("", "_diff", "_model")
    )
    verdict = "stationary" if model < ALPHA else "not stationary: see data.series.difference, log"
    return (
        f"ADF test on the training period: p = {levels:.3g} (levels), {diff:.3g} (differences), "
        f"{model:.3g} (as the model sees it: {verdict}; alpha {ALPHA})"
    )
