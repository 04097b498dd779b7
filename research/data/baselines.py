"""Forecast baselines in original units, to judge whether a learned forecaster adds anything.

Each takes the raw series `values` [N, F] (a 1-D series is one feature), the forecast origins t0
of `research.data.windows.make_windows` (the last observed step), the `horizon` and the target
columns (None: all), and returns predictions [W, horizon, C] float32 aligned with the
non-differenced window targets values[t0+1 .. t0+horizon]. A prediction reads values at
indices <= t0 only; `LinearAR.fit` reads the training origins' own targets and nothing later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from research.data.windows import as_2d, target_columns
from research.errors import DataError


def _checked(
    values: np.ndarray, origins: np.ndarray, targets: Sequence[int] | None, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values [N, C] of the target columns as float64, origins as int64, target columns)."""
    values = as_2d(values).astype(np.float64)
    columns = target_columns(targets, values.shape[1])
    origins = np.asarray(origins, dtype=np.int64).reshape(-1)
    if horizon < 1:
        raise DataError(f"forecast horizon must be >= 1, got {horizon}")
    if len(origins) and (origins.min() < 0 or origins.max() >= len(values)):
        raise DataError(f"origins must lie in [0, {len(values)}), got {origins.min()}..")
    return values[:, columns], origins, columns


def naive(
    values: np.ndarray, origins: np.ndarray, horizon: int, targets: Sequence[int] | None = None
) -> np.ndarray:
    """The last observed value y[t0] for every step of the horizon."""
    series, origins, _ = _checked(values, origins, targets, horizon)
    return np.repeat(series[origins][:, None, :], horizon, axis=1).astype(np.float32)


def seasonal_naive(
    values: np.ndarray,
    origins: np.ndarray,
    horizon: int,
    season: int,
    targets: Sequence[int] | None = None,
) -> np.ndarray:
    """y[t0 + h - season * ceil(h / season)]: the same point of the last observed season.
    season 1 is `naive`; every origin needs a whole observed season (t0 + 1 - season >= 0)."""
    series, origins, _ = _checked(values, origins, targets, horizon)
    if season < 1:
        raise DataError(f"seasonal_naive needs season >= 1, got {season}")
    if len(origins) and origins.min() + 1 - season < 0:
        raise DataError(f"seasonal_naive: origin {origins.min()} has no full season of {season}")
    steps = np.arange(1, horizon + 1)
    back = steps - season * -(-steps // season)  # h - season * ceil(h / season), in (-season, 0]
    return series[origins[:, None] + back[None, :]].astype(np.float32)


def _lags(series: np.ndarray, origins: np.ndarray, order: int) -> np.ndarray:
    """[W, order * C]: the last `order` values up to each origin, time-major then column."""
    if len(origins) and origins.min() - order + 1 < 0:
        raise DataError(f"LinearAR: origin {origins.min()} has fewer than order={order} lags")
    index = origins[:, None] + np.arange(1 - order, 1)[None, :]
    return series[index].reshape(len(origins), -1)


@dataclasses.dataclass(frozen=True)
class LinearAR:
    """Direct linear autoregression: one least-squares linear map (with intercept) from the last
    `order` values of the target columns (flattened) to all horizon x C future values.
    Fitted with sklearn.linear_model.LinearRegression on training windows only."""

    order: int
    horizon: int
    targets: tuple[int, ...]
    model: Any  # the fitted sklearn estimator

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        origins: np.ndarray,
        horizon: int,
        order: int,
        targets: Sequence[int] | None = None,
    ) -> LinearAR:
        """Fit on the training origins, reading only values[t0-order+1 .. t0+horizon]."""
        series, origins, columns = _checked(values, origins, targets, horizon)
        if order < 1:
            raise DataError(f"LinearAR needs order >= 1, got {order}")
        if len(origins) == 0 or origins.max() + horizon >= len(series):
            raise DataError(f"LinearAR.fit needs origins whose {horizon} targets are observed")
        future = series[origins[:, None] + np.arange(1, horizon + 1)[None, :]]
        from sklearn.linear_model import LinearRegression  # noqa: PLC0415 (1 s of imports)

        model = LinearRegression().fit(
            _lags(series, origins, order), future.reshape(len(origins), -1)
        )
        return cls(order=order, horizon=horizon, targets=tuple(columns.tolist()), model=model)

    def predict(self, values: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Predictions [W, horizon, C] from the `order` values up to each origin."""
        series, origins, _ = _checked(values, origins, self.targets, self.horizon)
        if len(origins) == 0:
            return np.zeros((0, self.horizon, len(self.targets)), np.float32)
        flat = self.model.predict(_lags(series, origins, self.order))
        return flat.reshape(len(origins), self.horizon, len(self.targets)).astype(np.float32)
