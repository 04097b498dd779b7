"""Time-series preparation: gap filling, chronological splits, CV folds, scalers and windows.

A series is an array `values` of shape [N, F] (time first, F features); a 1-D array is one
feature. Forecasting data must never see the future, so everything here follows three rules:

1. Splits are chronological: train=[0, a), eval=[a, b), test=[b, N); CV folds validate on a
   block that comes after every training block.
2. Statistics (a `Scaler`) are fitted on the training period only, then applied unchanged.
3. A window with forecast origin t0 reads inputs at indices <= t0 and targets at indices > t0,
   all inside [0, end); so nothing at or after `end` reaches any window of a period.

`fill_gaps` interpolates between neighbouring observations, so a filled value at or before t0
may use an observation after it. It never does when t0 itself is observed (every gap before t0
then lies between observations at or before t0): `observed_windows` keeps exactly the windows
whose origin and targets were observed, so inputs read only the past and every target is real.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from research.errors import DataError

_SCALER_KINDS = ("standard", "minmax", "none")
_FOLD_MODES = ("expanding", "sliding")


def as_2d(values: np.ndarray, name: str = "values") -> np.ndarray:
    """`values` as an [N, F] array; a 1-D series becomes one column."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise DataError(f"{name} must have shape [N] or [N, F], got {values.shape}")
    return values


def _float(values: np.ndarray) -> np.ndarray:
    """Floating inputs keep their dtype; anything else becomes float64."""
    return values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64)


def fill_gaps(values: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaNs over time, column by column; NaNs before the first (after the
    last) observation take that observation. Keeps the input's shape and float dtype."""
    original = np.asarray(values)
    filled = _float(as_2d(original)).copy()
    time = np.arange(len(filled))
    for column in range(filled.shape[1]):
        observed = ~np.isnan(filled[:, column])
        if not observed.any():
            raise DataError(f"fill_gaps: column {column} has no observed value; drop it first")
        filled[:, column] = np.interp(time, time[observed], filled[observed, column])
    return filled.reshape(original.shape)


def chronological_bounds(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    """(a, b) for the chronological split train=[0,a), eval=[a,b), test=[b,n): a=round(n*f0),
    b=round(n*(f0+f1)); fractions are 3 non-negative numbers summing to 1 with f0 > 0."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(
            f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}"
        )
    a, b = round(n * fractions[0]), round(n * (fractions[0] + fractions[1]))
    if fractions[0] == 0 or a < 1:
        raise DataError(f"the train split of {n} steps at fraction {fractions[0]} is empty")
    return a, b


def cv_folds(end: int, num_folds: int, mode: str = "expanding") -> list[tuple[int, int, int]]:
    """(train_start, train_end, eval_end) per time-series CV fold over [0, end): [0, end) is cut
    into num_folds + 1 near-equal blocks; fold k validates on block k + 1 and trains on blocks
    0..k ("expanding") or on block k only ("sliding"). eval_start == train_end."""
    if mode not in _FOLD_MODES:
        raise DataError(f"cv_folds mode must be one of {_FOLD_MODES}, got {mode!r}")
    if num_folds < 1:
        raise DataError(f"cv_folds needs num_folds >= 1, got {num_folds}")
    if end < num_folds + 1:
        raise DataError(
            f"cv_folds: {num_folds} folds need at least {num_folds + 1} steps, not {end}"
        )
    edges = [round(k * end / (num_folds + 1)) for k in range(num_folds + 2)]
    return [
        (0 if mode == "expanding" else edges[k], edges[k + 1], edges[k + 2])
        for k in range(num_folds)
    ]


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Per-column affine scaling fitted on the training period only: (x - center) / scale."""

    center: np.ndarray  # [F]
    scale: np.ndarray  # [F]; a constant column gets scale 1

    @classmethod
    def fit(cls, values: np.ndarray, kind: str = "standard") -> Scaler:
        """kind: standard (mean / std) | minmax (min / max - min, to [0, 1]) | none (0 / 1).
        NaNs are ignored, so it can be fitted before `fill_gaps`."""
        if kind not in _SCALER_KINDS:
            raise DataError(f"Scaler kind must be one of {_SCALER_KINDS}, got {kind!r}")
        values = as_2d(values).astype(np.float64)
        if len(values) == 0 or np.isnan(values).all(axis=0).any():
            raise DataError(f"Scaler.fit needs an observed value in every column of {kind!r}")
        if kind == "none":
            width = values.shape[1]
            return cls(center=np.zeros(width), scale=np.ones(width))
        if kind == "standard":
            center, scale = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        else:
            center = np.nanmin(values, axis=0)
            scale = np.nanmax(values, axis=0) - center
        # A constant column carries no scale; dividing by 1 keeps it finite (all zeros).
        return cls(center=center, scale=np.where(scale > 0, scale, 1.0))

    def _params(self, values: np.ndarray, columns: Sequence[int] | None) -> tuple[np.ndarray, ...]:
        """Center and scale for the last axis of `values`, in its float dtype."""
        index = slice(None) if columns is None else np.asarray(columns, dtype=np.int64)
        center, scale = self.center[index], self.scale[index]
        if values.shape[-1:] != center.shape:
            raise DataError(
                f"Scaler has {center.shape[0]} columns here, values' last axis is {values.shape}"
            )
        return center.astype(values.dtype), scale.astype(values.dtype)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(values - center) / scale over the last axis (features); keeps a float dtype."""
        values = _float(np.asarray(values))
        center, scale = self._params(values, None)
        return (values - center) / scale

    def inverse(self, values: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Back to original units; `columns` selects which columns' parameters apply to the
        last axis of `values` (for target columns only)."""
        values = _float(np.asarray(values))
        center, scale = self._params(values, columns)
        return values * scale + center


def target_columns(targets: Sequence[int] | None, width: int) -> np.ndarray:
    """Target column indices (None: all), checked against the number of features."""
    if targets is None:
        return np.arange(width)
    columns = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(columns) == 0 or columns.min() < 0 or columns.max() >= width:
        raise DataError(f"targets {list(targets)} must be non-empty indices into {width} features")
    return columns


def _window_origins(
    n: int, input_steps: int, horizon: int, start: int, end: int, stride: int, difference: bool
) -> np.ndarray:
    """Forecast origins t0 whose inputs start at >= 0 and whose targets lie in [start, end)."""
    for name, number in (("input_steps", input_steps), ("horizon", horizon), ("stride", stride)):
        if number < 1:
            raise DataError(f"make_windows needs {name} >= 1, got {number}")
    if not 0 <= start < end <= n:
        raise DataError(f"make_windows needs 0 <= start < end <= {n}, got [{start}, {end})")
    # A difference at the first input step reads one more step back.
    first = max(start - 1, input_steps - 1 + int(difference))
    origins = np.arange(first, end - horizon, stride, dtype=np.int64)
    if len(origins) == 0:
        raise DataError(
            f"no window fits: input_steps={input_steps}, horizon={horizon}, difference="
            f"{difference} in the period [{start}, {end}) of length {end - start}"
        )
    return origins


def make_windows(
    values: np.ndarray,
    *,
    input_steps: int,
    horizon: int,
    start: int,
    end: int,
    stride: int = 1,
    targets: Sequence[int] | None = None,
    difference: bool = False,
) -> dict[str, np.ndarray]:
    """Direct multi-horizon windows whose targets lie in [start, end).

    Origin t0 (the last input step): inputs = values[t0-input_steps+1 .. t0] (all columns),
    targets = values[t0+1 .. t0+horizon] of the `targets` columns. Inputs may reach back before
    `start` (the past is known) but never before 0; origins run from the earliest valid one,
    every `stride`-th. difference=True: inputs are first differences values[t]-values[t-1] and
    targets are values[t0+h]-values[t0]. Returns float32 "inputs" [W, input_steps, F],
    "targets" [W, horizon, C], "last" [W, C] (values[t0]) and int64 "origin" [W].
    """
    values = as_2d(values).astype(np.float64)
    columns = target_columns(targets, values.shape[1])
    origins = _window_origins(len(values), input_steps, horizon, start, end, stride, difference)
    input_index = origins[:, None] + np.arange(1 - input_steps, 1)[None, :]
    inputs = values[input_index]
    if difference:
        inputs = inputs - values[input_index - 1]
    last = values[origins][:, columns]
    future = values[origins[:, None] + np.arange(1, horizon + 1)[None, :]][:, :, columns]
    if difference:
        future = future - last[:, None, :]
    if np.isnan(inputs).any() or np.isnan(future).any():
        raise DataError("make_windows: values has NaNs inside the windows; call fill_gaps first")
    return {
        "inputs": inputs.astype(np.float32),
        "targets": future.astype(np.float32),
        "last": last.astype(np.float32),
        "origin": origins,
    }


def observed_windows(
    raw: np.ndarray, origins: np.ndarray, horizon: int, targets: Sequence[int] | None = None
) -> np.ndarray:
    """[W] booleans: true where the origin row (every column) and the targets' values (target
    columns, steps t0+1 .. t0+horizon) of `raw` [N, F] (NaN at gaps) were observed. Such a window
    reads no future through gap filling, and it is scored against real values only."""
    raw = as_2d(raw)
    columns = target_columns(targets, raw.shape[1])
    origins = np.asarray(origins, dtype=np.int64)
    steps = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    origin_seen = ~np.isnan(raw[origins]).any(axis=1)
    targets_seen = ~np.isnan(raw[steps][:, :, columns]).any(axis=(1, 2))
    return origin_seen & targets_seen
