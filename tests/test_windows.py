"""research.data.windows and research.data.baselines: gap filling, chronological splits and
CV folds, scalers and windows against hand-computed and brute-force references, no window or
fitted statistic sees the future, and forecast baselines on series they must fit exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from research.data import baselines, windows
from research.errors import DataError

PROPERTY = settings(max_examples=50, deadline=None)


# ---------------------------------------------------------------------------------- fill_gaps


def test_fill_gaps_interpolates_and_extends_edges():
    nan = np.nan
    np.testing.assert_array_equal(
        windows.fill_gaps(np.array([1, nan, 3, nan, nan, 6])), np.arange(1, 7)
    )
    np.testing.assert_array_equal(
        windows.fill_gaps(np.array([nan, 2, nan, 4, nan])), [2.0, 2.0, 3.0, 4.0, 4.0]
    )
    two = np.array([[nan, 1.0], [0.0, nan], [2.0, 5.0], [nan, nan]])
    np.testing.assert_array_equal(windows.fill_gaps(two), [[0, 1], [0, 3], [2, 5], [2, 5]])


def test_fill_gaps_keeps_shape_and_float_dtype():
    filled = windows.fill_gaps(np.array([[1.0], [np.nan], [2.0]], np.float32))
    assert filled.dtype == np.float32 and filled.shape == (3, 1)
    np.testing.assert_array_equal(filled[:, 0], [1.0, 1.5, 2.0])
    assert windows.fill_gaps(np.array([1, 2, 3])).dtype == np.float64


def test_fill_gaps_rejects_an_unobserved_column():
    with pytest.raises(DataError, match="column 1"):
        windows.fill_gaps(np.array([[1.0, np.nan], [2.0, np.nan]]))


@PROPERTY
@given(st.integers(1, 40), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_fill_gaps_property(n, width, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, width))
    missing = rng.random((n, width)) < 0.5
    missing[rng.integers(n, size=width), np.arange(width)] = False  # one observation per column
    filled = windows.fill_gaps(np.where(missing, np.nan, values))
    np.testing.assert_array_equal(filled[~missing], values[~missing])
    for t, f in zip(*np.nonzero(missing), strict=True):
        observed = np.flatnonzero(~missing[:, f])
        before, after = observed[observed < t], observed[observed > t]
        neighbours = values[[*before[-1:], *after[:1]], f]
        assert neighbours.min() - 1e-12 <= filled[t, f] <= neighbours.max() + 1e-12


# ------------------------------------------------------------------------ splits and CV folds


def test_chronological_bounds_by_hand():
    assert windows.chronological_bounds(10, (0.7, 0.2, 0.1)) == (7, 9)
    assert windows.chronological_bounds(100, [0.6, 0.2, 0.2]) == (60, 80)
    assert windows.chronological_bounds(9, (1.0, 0.0, 0.0)) == (9, 9)


@pytest.mark.parametrize(
    "n, fractions",
    [
        (10, (0.7, 0.2)),
        (10, (0.7, 0.2, 0.2)),
        (10, (1.1, -0.1, 0.0)),
        (10, (0, 0.5, 0.5)),
        (1, (0.3, 0.3, 0.4)),
    ],
)
def test_chronological_bounds_errors(n, fractions):
    with pytest.raises(DataError):
        windows.chronological_bounds(n, fractions)


def test_cv_folds_by_hand():
    assert windows.cv_folds(10, 4) == [(0, 2, 4), (0, 4, 6), (0, 6, 8), (0, 8, 10)]
    assert windows.cv_folds(10, 4, "sliding") == [(0, 2, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    # Edges round(10 / 3) = 3 and round(20 / 3) = 7.
    assert windows.cv_folds(10, 2) == [(0, 3, 7), (0, 7, 10)]
    assert windows.cv_folds(10, 2, "sliding") == [(0, 3, 7), (3, 7, 10)]


@pytest.mark.parametrize(
    "end, num_folds, mode", [(10, 2, "random"), (10, 0, "expanding"), (2, 2, "sliding")]
)
def test_cv_folds_errors(end, num_folds, mode):
    with pytest.raises(DataError):
        windows.cv_folds(end, num_folds, mode)


@PROPERTY
@given(st.integers(2, 300), st.integers(1, 12), st.sampled_from(["expanding", "sliding"]))
def test_cv_folds_property(end, num_folds, mode):
    assume(end >= num_folds + 1)
    folds = windows.cv_folds(end, num_folds, mode)
    block = end / (num_folds + 1)
    assert len(folds) == num_folds and folds[-1][2] == end
    for k, (train_start, train_end, eval_end) in enumerate(folds):
        assert 0 <= train_start < train_end < eval_end <= end  # training blocks come first
        assert abs((eval_end - train_end) - block) <= 1
        if k:  # eval blocks are disjoint, contiguous and increasing: this one starts where
            assert train_end == folds[k - 1][2]  # the previous one ended
        if mode == "expanding":
            assert train_start == 0
        else:
            assert abs((train_end - train_start) - block) <= 1
            assert train_start == (folds[k - 1][1] if k else 0)  # exactly block k


# ------------------------------------------------------------------------------------- Scaler


def test_scaler_fits_by_hand():
    x = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [6.0, 10.0]])
    standard = windows.Scaler.fit(x)
    np.testing.assert_allclose(standard.center, [3.0, 10.0])
    np.testing.assert_allclose(standard.scale, [math.sqrt(14 / 4), 1.0])  # constant column: 1
    minmax = windows.Scaler.fit(x, "minmax")
    np.testing.assert_allclose(minmax.transform(x)[:, 0], [0.0, 0.2, 0.4, 1.0])
    np.testing.assert_allclose(minmax.transform(x)[:, 1], 0.0)
    none = windows.Scaler.fit(x, "none")
    np.testing.assert_array_equal(none.transform(x), x)
    with_gap = np.vstack([x, [[np.nan, np.nan]]])
    np.testing.assert_allclose(windows.Scaler.fit(with_gap).scale, standard.scale)


def test_scaler_inverse_of_target_columns_and_dtype():
    x = np.array([[1.0, -4.0], [3.0, 0.0], [5.0, 8.0]], np.float32)
    scaler = windows.Scaler.fit(x, "standard")
    scaled = scaler.transform(x)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaler.inverse(scaled[:, 1:], columns=[1]), x[:, 1:], rtol=1e-6)
    windowed = np.stack([scaled, scaled])  # [W, T, F] works on the last axis too
    np.testing.assert_allclose(scaler.inverse(windowed), np.stack([x, x]), rtol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: windows.Scaler.fit(np.ones((3, 1)), "robust"),
        lambda: windows.Scaler.fit(np.array([[1.0, np.nan]])),
        lambda: windows.Scaler.fit(np.ones((3, 2))).transform(np.ones((3, 3))),
        lambda: windows.Scaler.fit(np.ones((3, 2))).inverse(np.ones((3, 2)), columns=[0]),
    ],
)
def test_scaler_errors(call):
    with pytest.raises(DataError):
        call()


@PROPERTY
@given(
    st.integers(1, 30),
    st.integers(1, 3),
    st.sampled_from(["standard", "minmax", "none"]),
    st.integers(0, 2**32 - 1),
)
def test_scaler_inverse_round_trip(n, width, kind, seed):
    x = np.random.default_rng(seed).normal(3.0, 5.0, size=(n, width))
    scaler = windows.Scaler.fit(x, kind)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(x)), x, rtol=1e-12, atol=1e-12)


@PROPERTY
@given(st.integers(12, 60), st.integers(0, 2**32 - 1))
def test_scaled_train_windows_never_see_the_future(n, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 2))
    a, _ = windows.chronological_bounds(n, (0.6, 0.2, 0.2))

    def pipeline(series):
        scaler = windows.Scaler.fit(series[:a])
        scaled = scaler.transform(series)
        return scaler, windows.make_windows(scaled, input_steps=3, horizon=2, start=0, end=a)

    future = values.copy()
    future[a:] = rng.normal(100.0, 50.0, size=(n - a, 2))
    (scaler, train), (other_scaler, other_train) = pipeline(values), pipeline(future)
    np.testing.assert_array_equal(scaler.center, other_scaler.center)
    np.testing.assert_array_equal(scaler.scale, other_scaler.scale)
    for key in train:
        np.testing.assert_array_equal(train[key], other_train[key])


# ------------------------------------------------------------------------------- make_windows


def test_make_windows_by_hand():
    values = np.arange(20.0).reshape(10, 2)  # values[t] = [2t, 2t + 1]
    w = windows.make_windows(values, input_steps=3, horizon=2, start=4, end=9)
    np.testing.assert_array_equal(w["origin"], [3, 4, 5, 6])
    np.testing.assert_array_equal(w["inputs"][0], [[2, 3], [4, 5], [6, 7]])
    np.testing.assert_array_equal(w["targets"][0], [[8, 9], [10, 11]])
    np.testing.assert_array_equal(w["targets"][-1], [[14, 15], [16, 17]])  # t0=6: targets 7, 8
    np.testing.assert_array_equal(w["last"], [[6, 7], [8, 9], [10, 11], [12, 13]])
    assert {key: (w[key].dtype, w[key].shape) for key in w} == {
        "inputs": (np.float32, (4, 3, 2)),
        "targets": (np.float32, (4, 2, 2)),
        "last": (np.float32, (4, 2)),
        "origin": (np.int64, (4,)),
    }
    strided = windows.make_windows(values, input_steps=3, horizon=2, start=4, end=9, stride=2)
    np.testing.assert_array_equal(strided["origin"], [3, 5])
    subset = windows.make_windows(values, input_steps=3, horizon=2, start=4, end=9, targets=[1])
    np.testing.assert_array_equal(subset["targets"][0], [[9], [11]])
    np.testing.assert_array_equal(subset["last"][:, 0], [7, 9, 11, 13])
    assert subset["inputs"].shape == (4, 3, 2)


def test_make_windows_difference_by_hand():
    squares = np.arange(10.0) ** 2
    w = windows.make_windows(squares, input_steps=2, horizon=2, start=0, end=10, difference=True)
    np.testing.assert_array_equal(w["origin"], np.arange(2, 8))  # t0 - 2 >= 0 and t0 + 2 <= 9
    np.testing.assert_array_equal(w["inputs"][0, :, 0], [1 - 0, 4 - 1])
    np.testing.assert_array_equal(w["targets"][0, :, 0], [9 - 4, 16 - 4])
    np.testing.assert_array_equal(w["last"][:, 0], squares[2:8])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"horizon": 0},
        {"input_steps": 0},
        {"stride": 0},
        {"end": 11},
        {"start": 5, "end": 5},
        {"input_steps": 6, "horizon": 5},
        {"targets": [2]},
        {"targets": []},
    ],
)
def test_make_windows_errors(kwargs):
    arguments = {"input_steps": 2, "horizon": 1, "start": 0, "end": 10} | kwargs
    with pytest.raises(DataError):
        windows.make_windows(np.zeros((10, 2)), **arguments)


def test_make_windows_rejects_gaps_and_names_the_sizes():
    with pytest.raises(DataError, match="fill_gaps"):
        windows.make_windows(
            np.array([0.0, np.nan, 2, 3]), input_steps=1, horizon=1, start=0, end=4
        )
    with pytest.raises(DataError, match="input_steps=3, horizon=2.*length 4"):
        windows.make_windows(np.zeros(8), input_steps=3, horizon=2, start=0, end=4)


@st.composite
def window_cases(draw):
    """A random series and a valid-or-not window request over it."""
    n = draw(st.integers(2, 30))
    width = draw(st.integers(1, 3))
    start = draw(st.integers(0, n - 1))
    subset = st.lists(st.integers(0, width - 1), min_size=1, max_size=width, unique=True)
    return {
        "values": np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=(n, width)),
        "input_steps": draw(st.integers(1, 5)),
        "horizon": draw(st.integers(1, 4)),
        "start": start,
        "end": draw(st.integers(start + 1, n)),
        "stride": draw(st.integers(1, 3)),
        "targets": draw(st.none() | subset),
        "difference": draw(st.booleans()),
    }


def _brute_force_windows(case):
    """Windows built one by one from the definition."""
    values, p, h = case["values"], case["input_steps"], case["horizon"]
    cols = list(range(values.shape[1])) if case["targets"] is None else case["targets"]
    lag = int(case["difference"])
    valid = [
        t0
        for t0 in range(len(values))
        if t0 - p + 1 - lag >= 0 and t0 + 1 >= case["start"] and t0 + h < case["end"]
    ]
    origins = valid[:: case["stride"]]
    inputs, targets = [], []
    for t0 in origins:
        steps = range(t0 - p + 1, t0 + 1)
        inputs.append([values[t] - (values[t - 1] if lag else 0) for t in steps])
        targets.append(
            [values[t0 + k, cols] - (values[t0, cols] if lag else 0) for k in range(1, h + 1)]
        )
    return origins, inputs, targets, [values[t0, cols] for t0 in origins]


def _request(case):
    return {key: value for key, value in case.items() if key != "values"}


@PROPERTY
@given(window_cases())
def test_make_windows_matches_brute_force(case):
    origins, inputs, targets, last = _brute_force_windows(case)
    if not origins:
        with pytest.raises(DataError, match="no window fits"):
            windows.make_windows(case["values"], **_request(case))
        return
    w = windows.make_windows(case["values"], **_request(case))
    np.testing.assert_array_equal(w["origin"], origins)
    np.testing.assert_array_equal(w["inputs"], np.float32(inputs))
    np.testing.assert_array_equal(w["targets"], np.float32(targets))
    np.testing.assert_array_equal(w["last"], np.float32(last))


@PROPERTY
@given(window_cases())
def test_make_windows_reads_only_the_past_and_the_period(case):
    # Each value is its own time index, so the windows show which indices were read.
    n, width = case["values"].shape
    case |= {
        "values": np.repeat(np.arange(n, dtype=np.float64)[:, None], width, 1),
        "difference": False,
    }
    try:
        w = windows.make_windows(case["values"], **_request(case))
    except DataError:
        assume(False)
    origin = w["origin"][:, None]
    assert (w["inputs"] >= 0).all() and (w["inputs"][..., 0] <= origin).all()
    assert (w["targets"][..., 0] > origin).all()
    assert (w["targets"] >= case["start"]).all() and (w["targets"] < case["end"]).all()


@PROPERTY
@given(window_cases(), st.integers(0, 2**32 - 1))
def test_make_windows_ignore_the_future_and_the_distant_past(case, seed):
    try:
        w = windows.make_windows(case["values"], **_request(case))
    except DataError:
        assume(False)
    rng = np.random.default_rng(seed)
    # The earliest origin is start - 1 (or later), whose inputs reach back input_steps - 1 steps,
    # one more when differencing.
    oldest = case["start"] - case["input_steps"] - int(case["difference"])
    for region in (slice(case["end"], None), slice(0, max(oldest, 0))):
        changed = case["values"].copy()
        changed[region] = rng.normal(50.0, 10.0, size=changed[region].shape)
        other = windows.make_windows(changed, **_request(case))
        for key in w:
            np.testing.assert_array_equal(w[key], other[key])


# ---------------------------------------------------------------------------------- baselines


def test_naive_and_seasonal_naive_by_hand():
    values = np.arange(10.0)
    np.testing.assert_array_equal(
        baselines.naive(values, [3, 5], 3)[..., 0], [[3, 3, 3], [5, 5, 5]]
    )
    # season 2 from t0 = 5: h=1 -> 5+1-2 = 4, h=2 -> 5+2-2 = 5, h=3 -> 5+3-4 = 4.
    np.testing.assert_array_equal(
        baselines.seasonal_naive(values, [5], 3, season=2)[0, :, 0], [4, 5, 4]
    )
    np.testing.assert_array_equal(
        baselines.seasonal_naive(values, [3, 5], 3, season=1), baselines.naive(values, [3, 5], 3)
    )


def test_seasonal_naive_is_exact_on_a_periodic_series():
    cycle = np.array([1.0, 5.0, 2.0, 7.0])
    values = np.stack([np.tile(cycle, 10), 10 * np.tile(cycle, 10), np.arange(40.0)], axis=1)
    w = windows.make_windows(values, input_steps=4, horizon=6, start=4, end=40, targets=[0, 1])
    seasonal = baselines.seasonal_naive(values, w["origin"], 6, season=4, targets=[0, 1])
    np.testing.assert_array_equal(seasonal, w["targets"])
    naive = baselines.naive(values, w["origin"], 6, targets=[0, 1])
    assert naive.shape == w["targets"].shape and np.abs(naive - w["targets"]).mean() > 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: baselines.seasonal_naive(np.arange(10.0), [3], 2, season=5),
        lambda: baselines.seasonal_naive(np.arange(10.0), [3], 2, season=0),
        lambda: baselines.naive(np.arange(10.0), [3], 0),
        lambda: baselines.naive(np.arange(10.0), [10], 1),
        lambda: baselines.naive(np.arange(10.0), [3], 1, targets=[1]),
        lambda: baselines.LinearAR.fit(np.arange(10.0), [0, 5], horizon=1, order=2),
        lambda: baselines.LinearAR.fit(np.arange(10.0), [5, 8], horizon=2, order=2),
    ],
)
def test_baseline_errors(call):
    with pytest.raises(DataError):
        call()


def _ar2(n: int) -> tuple[np.ndarray, float, float, float]:
    """A noiseless AR(2) series y[t] = c + a y[t-1] + b y[t-2] (a slowly damped oscillation)."""
    a, b, c = 2 * 0.99 * math.cos(0.5), -(0.99**2), 0.3
    y = np.empty(n)
    y[:2] = 5.0, 4.0
    for t in range(2, n):
        y[t] = c + a * y[t - 1] + b * y[t - 2]
    return y, a, b, c


def test_linear_ar_recovers_an_exact_ar2_process():
    y, a, b, c = _ar2(160)
    train = windows.make_windows(y, input_steps=2, horizon=3, start=10, end=100)
    model = baselines.LinearAR.fit(y, train["origin"], horizon=3, order=2)
    # The first output is the one-step map: lags (y[t0-1], y[t0]) -> y[t0+1].
    np.testing.assert_allclose(model.model.coef_[0], [b, a], atol=1e-8)
    np.testing.assert_allclose(model.model.intercept_[0], c, atol=1e-8)
    held_out = windows.make_windows(y, input_steps=2, horizon=3, start=100, end=160)
    prediction = model.predict(y, held_out["origin"])
    assert prediction.shape == (len(held_out["origin"]), 3, 1) and prediction.dtype == np.float32
    np.testing.assert_allclose(prediction, held_out["targets"], rtol=1e-6, atol=1e-6)


def test_linear_ar_fit_reads_only_its_training_windows():
    y, *_ = _ar2(160)
    y = y + np.random.default_rng(0).normal(0.0, 0.5, size=y.shape)  # so the fit is not exact
    origins = np.arange(20, 90)  # reads y[19 .. 92] with order 2 and horizon 3
    held_out = np.arange(100, 150)
    reference = baselines.LinearAR.fit(y, origins, horizon=3, order=2).predict(y, held_out)
    changed = y.copy()
    changed[93:], changed[:19] = 1e3, -1e3
    refit = baselines.LinearAR.fit(changed, origins, horizon=3, order=2)
    np.testing.assert_array_equal(refit.predict(y, held_out), reference)
    changed[92] += 1.0  # the last target read does matter
    moved = baselines.LinearAR.fit(changed, origins, horizon=3, order=2).predict(y, held_out)
    assert not np.array_equal(moved, reference)


def test_linear_ar_order_one_is_a_least_squares_line():
    values = np.random.default_rng(1).normal(size=(50, 2))
    origins = np.arange(0, 40)
    model = baselines.LinearAR.fit(values, origins, horizon=1, order=1, targets=[1])
    slope, intercept = np.polyfit(values[origins, 1], values[origins + 1, 1], 1)
    prediction = model.predict(values, [45])
    np.testing.assert_allclose(prediction[0, 0, 0], slope * values[45, 1] + intercept, rtol=1e-5)
    assert model.targets == (1,)


# ------------------------------------------------------------------ gaps and observed windows


def test_observed_windows_by_hand():
    raw = np.array([[1.0, 0.0], [np.nan, 0.0], [3.0, np.nan], [4.0, 0.0], [5.0, 0.0]])
    origins = np.array([0, 1, 2, 3])
    # Origin 1 is a gap; origin 2 has a gap in column 1 (an input); origin 0's target is a gap.
    keep = windows.observed_windows(raw, origins, horizon=1, targets=[0])
    np.testing.assert_array_equal(keep, [False, False, False, True])
    # A gap in a column that is not forecast only matters at the origin.
    keep = windows.observed_windows(raw, np.array([0, 3]), horizon=1, targets=[1])
    np.testing.assert_array_equal(keep, [True, True])


def _series_options(horizon: int, difference: bool):
    from research.config import base_config

    s = base_config().data.series
    s.input_steps, s.horizon, s.difference = 4, horizon, difference
    return s


@PROPERTY
@given(
    st.integers(60, 120),
    st.integers(1, 3),
    st.booleans(),
    st.floats(0.05, 0.3),
    st.integers(0, 2**32 - 1),
)
def test_gap_filled_eval_and_test_windows_read_no_future_and_score_real_values(
    n, horizon, difference, gap_rate, seed
):
    from research.data import sequences

    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, 1)).cumsum(axis=0)
    raw[rng.random(n) < gap_rate] = np.nan
    raw[0] = 0.0  # an observed start, so every period's gaps can be filled
    periods = {"train": (0, n // 2), "eval": (n // 2, 3 * n // 4), "test": (3 * n // 4, n)}
    options = _series_options(horizon, difference)
    try:
        cut = sequences.cut_series(raw, periods, options)
    except DataError:  # a period left without an observed window
        assume(False)
    for prefix in ("eval", "test"):
        made = cut.windows[prefix]
        for row, t0 in enumerate(made["origin"]):
            steps = t0 + np.arange(1, horizon + 1)
            np.testing.assert_array_equal(cut.filled[steps], raw[steps])  # real targets
            future = raw.copy()
            future[t0 + 1 :] += 100.0  # NaNs stay NaN: the same windows are kept
            other = sequences.cut_series(future, periods, options).windows[prefix]
            match = np.flatnonzero(other["origin"] == t0)
            assert len(match) == 1
            np.testing.assert_array_equal(other["inputs"][match[0]], made["inputs"][row])
