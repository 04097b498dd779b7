"""Sequence datasets prepared for a run: forecast windows over a series, tokenized text.

`prepare(data_config, info, batch_size)` turns a dataset into in-memory train/eval/test sources:

* a series (`data.series.input_steps` > 0; the builder's "value" feature, one record per time
  step, in the split `data.train_split`): chronological train/eval/test periods
  (`data.series.fractions`), or with `data.num_folds` = k the fold `data.fold` of an expanding
  (or sliding) window cross-validation over the train+eval period, the test period unchanged.
  Gaps are filled by linear interpolation within each period and only windows whose origin and
  targets were observed are kept (so no input is interpolated from the future and every target
  is real); `data.series.log` takes logarithms; the scaler is fitted on the training period
  only; and each window carries the naive, seasonal-naive and linear-AR forecasts (the AR
  fitted on training windows only) in original units, beside the truth: every evaluation scores
  them on the same windows as the model. The training period's values go with the sources, for
  the forecast's report to test their stationarity (research/reporting/forecasting.py).
* a text (`data.text.level` char | word): a vocabulary from the train split only (min count,
  size cap, PAD 0, OOV 1), then either classification examples padded or truncated to
  `max_length` with their real "length", or (`lm_length` > 0) next-token windows over each
  split's concatenated text. With `data.tbptt` the train windows are consecutive pieces of
  `batch_size` parallel streams, in stream order, marked "reset" where a stream starts over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from research.data import baselines, text, windows
from research.data.prepared import PreparedData
from research.data.sources import ArraySource, DatasetInfo, open_source
from research.errors import ConfigError, DataError


def needs_preparation(d: Any) -> bool:
    """Whether `data` asks for series windows or tokenized text (else records are read as is)."""
    return d.series.input_steps > 0 or d.text.level is not None


def prepare(
    d: Any, info: DatasetInfo, split_names: Mapping[str, str], batch_size: int
) -> PreparedData:
    """The run's sources for a series or a text dataset (see the module docstring)."""
    if d.series.input_steps > 0:
        if d.tbptt:
            raise ConfigError("data.tbptt streams text windows; forecast windows are shuffled")
        return _series(d, info)
    return _text(d, info, split_names, batch_size)


# --- series -------------------------------------------------------------------------------


def read_series(d: Any, info: DatasetInfo) -> np.ndarray:
    """The whole series [N, F] (float64, NaN at gaps) in time order."""
    if "value" not in info.features:
        raise DataError(
            f"dataset {info.name!r} has no 'value' feature: data.series needs a series dataset "
            "(sunspots, co2, elnino, or a builder with one record per time step)"
        )
    arrays = open_source(info.name, d.train_split, d.data_dir, in_memory=True).arrays
    order = np.argsort(arrays["index"], kind="stable") if "index" in arrays else slice(None)
    values = np.asarray(arrays["value"], np.float64)[order]
    return values.reshape(len(values), -1)


def series_periods(d: Any, n: int) -> dict[str, tuple[int, int]]:
    """[start, end) of the train / eval / test periods (a CV fold replaces train and eval)."""
    a, b = windows.chronological_bounds(n, tuple(d.series.fractions))
    periods = {"train": (0, a), "eval": (a, b), "test": (b, n)}
    if d.num_folds:
        folds = windows.cv_folds(b, d.num_folds, d.series.cv)
        if not 0 <= d.fold < len(folds):
            raise ConfigError(f"data.fold={d.fold} must be in [0, data.num_folds={d.num_folds})")
        start, mid, end = folds[d.fold]
        periods.update(train=(start, mid), eval=(mid, end))
    return periods


@dataclasses.dataclass(frozen=True)
class SeriesWindows:
    """A series cut into forecast windows, period by period (`cut_series`)."""

    filled: np.ndarray  # [N, F]: gaps filled within each period, original units
    levels: np.ndarray  # what the windows are cut from: `filled`, or its log
    scaler: windows.Scaler  # fitted on the training period of `levels`
    targets: tuple[int, ...]  # the forecast columns
    windows: dict[str, dict[str, np.ndarray]]  # by period: make_windows' arrays, observed only


def cut_series(
    raw: np.ndarray, periods: Mapping[str, tuple[int, int]], s: Any, name: str = "series"
) -> SeriesWindows:
    """Fill gaps within each period, take logs (`s.log`), scale with the training period's
    statistics and cut every period into windows whose origin and targets were observed."""
    filled = _fill_by_period(raw, periods) if s.fill_gaps else raw
    if np.isnan(filled).any():
        raise DataError(f"dataset {name!r} has gaps: set data.series.fill_gaps=True")
    targets = tuple(s.targets) or tuple(range(raw.shape[1]))
    levels = _log_levels(filled, name) if s.log else filled  # what the model reads
    scaler = windows.Scaler.fit(levels[slice(*periods["train"])], s.scaler)
    scaled = scaler.transform(levels)
    made = {
        prefix: _observed_only(
            windows.make_windows(
                scaled,
                input_steps=s.input_steps,
                horizon=s.horizon,
                start=start,
                end=end,
                stride=s.stride if prefix == "train" else 1,
                targets=targets,
                difference=s.difference,
            ),
            raw,
            targets,
            prefix,
        )
        for prefix, (start, end) in periods.items()
    }
    return SeriesWindows(filled, levels, scaler, targets, made)


def _series(d: Any, info: DatasetInfo) -> PreparedData:
    s = d.series
    raw = read_series(d, info)
    periods = series_periods(d, len(raw))
    cut = cut_series(raw, periods, s, info.name)
    filled, targets = cut.filled, cut.targets
    order = s.ar_order or s.input_steps
    train_origins = cut.windows["train"]["origin"]
    ar = baselines.LinearAR.fit(filled, train_origins, s.horizon, order, targets)
    sources = {
        prefix: ArraySource(_forecast_records(w, cut, s, ar)) for prefix, w in cut.windows.items()
    }
    return PreparedData(
        sources,
        None,
        output_shape=(s.horizon, len(targets)),
        log_levels=bool(s.log),
        periods=periods,
        train_values=filled[slice(*periods["train"])][:, list(targets)],
    )


def _observed_only(
    w: dict[str, np.ndarray], raw: np.ndarray, targets: tuple, prefix: str
) -> dict[str, np.ndarray]:
    """The windows whose origin and targets were observed in `raw` (windows.observed_windows)."""
    horizon = w["targets"].shape[1]
    keep = windows.observed_windows(raw, w["origin"], horizon, targets)
    if not keep.any():
        raise DataError(
            f"every {prefix} window has a gap at its origin or in its targets; "
            "use a longer period (data.series.fractions) or a shorter horizon"
        )
    return {key: value[keep] for key, value in w.items()}


def _log_levels(filled: np.ndarray, name: str) -> np.ndarray:
    """log(values), refusing a series with values at or below zero (where log is undefined)."""
    if (filled <= 0).any():
        raise DataError(
            f"data.series.log needs positive values; {name!r} has {int((filled <= 0).sum())} "
            f"at or below zero (min {filled.min():g}): use data.series.difference instead"
        )
    return np.log(filled)


def _fill_by_period(raw: np.ndarray, periods: Mapping[str, tuple[int, int]]) -> np.ndarray:
    """Linear interpolation of gaps within each stretch between period edges, so no period's
    filled values read another period (with CV folds, the fold's edges count)."""
    edges = sorted({0, len(raw), *(edge for period in periods.values() for edge in period)})
    chunks = [raw[lo:hi] for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
    return np.concatenate([windows.fill_gaps(chunk) for chunk in chunks])


def _forecast_records(
    w: dict[str, np.ndarray], cut: SeriesWindows, s: Any, ar: Any
) -> dict[str, np.ndarray]:
    """Window arrays plus what scoring in original units needs: scale, offset, truth, baselines."""
    origin, cols, filled = w["origin"], list(cut.targets), cut.filled
    count = len(origin)
    scale = np.broadcast_to(cut.scaler.scale[cols], (count, len(cols)))
    # Differenced targets are changes from the last level: add it back (in the model's levels).
    offset = (
        cut.levels[origin][:, cols]
        if s.difference
        else np.broadcast_to(cut.scaler.center[cols], scale.shape)
    )
    steps = origin[:, None] + np.arange(1, s.horizon + 1)[None]
    return {
        "inputs": w["inputs"],
        "targets": w["targets"],
        "origin": origin,
        "scale": np.asarray(scale, np.float32),
        "offset": np.asarray(offset, np.float32),
        "truth": filled[steps][:, :, cols].astype(np.float32),
        "naive": baselines.naive(filled, origin, s.horizon, cols),
        "seasonal_naive": baselines.seasonal_naive(filled, origin, s.horizon, s.season, cols),
        "ar": ar.predict(filled, origin),
    }


# --- text ---------------------------------------------------------------------------------


def _text(
    d: Any, info: DatasetInfo, split_names: Mapping[str, str], batch_size: int
) -> PreparedData:
    t = d.text
    if t.field not in info.features:
        raise DataError(
            f"dataset {info.name!r} has no text feature {t.field!r} (data.text.field); "
            f"features: {', '.join(info.features)}"
        )
    raw = {prefix: _read(d, info, split).arrays for prefix, split in split_names.items()}
    tokens = {
        prefix: [
            text.tokenize(_as_str(x), level=t.level, lowercase=t.lowercase) for x in arrays[t.field]
        ]
        for prefix, arrays in raw.items()
    }
    vocab = text.Vocabulary.build(tokens["train"], min_count=t.min_count, max_size=t.max_vocab)
    if t.lm_length:
        sources = {p: _lm_source(vocab, toks, t.lm_length) for p, toks in tokens.items()}
        if d.tbptt:
            sources["train"] = streams(sources["train"], batch_size)
        return PreparedData(sources, None, vocab_size=len(vocab), vocabulary=vocab)
    if d.tbptt:
        raise ConfigError("data.tbptt needs language-model windows (data.text.lm_length > 0)")
    sources = {
        p: _classification_source(vocab, raw[p][t.field], raw[p]["label"], t) for p in split_names
    }
    return PreparedData(sources, info.num_classes, vocab_size=len(vocab), vocabulary=vocab)


def _classification_source(
    vocab: text.Vocabulary, texts: np.ndarray, labels: np.ndarray, t: Any
) -> ArraySource:
    """Token ids right-padded (or truncated) to `max_length`, their real lengths, the labels."""
    encoded = text.encode_texts(
        texts,
        vocab,
        level=t.level,
        lowercase=t.lowercase,
        max_length=t.max_length,
        truncate=t.truncate,
    )
    return ArraySource(
        {
            "inputs": encoded["tokens"],
            "length": encoded["length"],
            "label": np.asarray(labels, np.int32),
        }
    )


def _read(d: Any, info: DatasetInfo, split: str) -> ArraySource:
    return open_source(info.name, split, d.data_dir, in_memory=True)


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _lm_source(vocab: text.Vocabulary, token_lists: list, length: int) -> ArraySource:
    """Consecutive next-token windows over the split's texts joined end to end."""
    ids = vocab.encode([tok for toks in token_lists for tok in toks])
    return ArraySource(text.lm_windows(ids, length))


def streams(source: ArraySource, batch_size: int) -> ArraySource:
    """Reorder consecutive windows into `batch_size` parallel streams for truncated BPTT.

    Stream b holds windows [b*S, (b+1)*S) (S = windows // batch_size; the rest is dropped);
    reading the result in order gives, at step s, window s of every stream, so the state each
    stream ends a step with is where its next window starts. "reset" is 1 at each stream's first
    window (where a new pass over the data starts and the carried state must be zeroed).
    """
    count = len(source) // batch_size
    if count < 1:
        raise DataError(
            f"{len(source)} training windows cannot fill {batch_size} truncated-BPTT streams; "
            "lower batch_size or data.text.lm_length"
        )
    step, stream = np.divmod(np.arange(count * batch_size), batch_size)
    taken = source.take(stream * count + step)
    taken["reset"] = (step == 0).astype(np.float32)
    return ArraySource(taken)
