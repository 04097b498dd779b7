"""Stationarity checks and the log transform of forecast series: the ADF verdicts on processes
whose answer is known, the forecast report's summary entries against direct tests of the
training period, and log windows scored in original units (a perfect forecast scores 0, a
no-change one the naive's)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from statsmodels.tsa.stattools import adfuller
from test_sequences import _config, _eval_with_outputs, _prepared

from research.analysis import stationarity
from research.data.builders.series import elnino_series, sunspots_series
from research.errors import DataError
from research.reporting.forecasting import ForecastReport
from research.tasks import RegressionTask, get_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _random_walk(n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=n))


@pytest.mark.parametrize("seed", range(5))
def test_adf_finds_the_unit_root_of_a_random_walk_and_not_of_its_steps(seed):
    walk = _random_walk(400, seed)
    assert not stationarity.adf_test(walk).stationary
    steps = stationarity.adf_test(np.diff(walk))
    assert steps.stationary and steps.pvalue < 1e-3


def test_adf_matches_statsmodels_and_handles_a_constant():
    walk = _random_walk(200, 0)
    statistic, pvalue, lags, nobs, *_ = adfuller(walk, autolag="AIC", result_object=False)
    result = stationarity.adf_test(walk)
    assert (result.statistic, result.pvalue, result.lags, result.nobs) == pytest.approx(
        (statistic, pvalue, lags, nobs)
    )
    assert stationarity.adf_test(np.full(20, 3.0)).stationary  # no regression to run
    with pytest.raises(DataError, match="finite"):
        stationarity.adf_test(np.array([1.0, np.nan] * 10))
    with pytest.raises(DataError, match="at least 8"):
        stationarity.adf_test(np.arange(5.0))


def test_summary_entries_test_levels_differences_and_the_models_view():
    walk = np.exp(_random_walk(300, 1) * 0.05)  # positive, so log applies
    both = np.stack([walk, np.random.default_rng(2).normal(size=300)], axis=1)
    one = stationarity.summary_entries(walk[:, None], log=True, difference=True)
    assert one["train/adf_pvalue"] == stationarity.adf_test(walk).pvalue
    assert one["train/adf_pvalue_diff"] == stationarity.adf_test(np.diff(walk)).pvalue
    model = stationarity.adf_test(np.diff(np.log(walk)))
    assert one["train/adf_pvalue_model"] == model.pvalue
    assert one["train/stationary_model"] is model.stationary is True
    two = stationarity.summary_entries(both, log=False, difference=False)
    assert two["train/adf_pvalue_0"] == two["train/adf_pvalue_model_0"] == one["train/adf_pvalue"]
    assert "train/adf_pvalue_1" in two and "train/adf_pvalue" not in two
    assert stationarity.summary_entries(walk[:8, None], log=False, difference=False) == {}
    assert "levels" in stationarity.describe(one) and "levels" in stationarity.describe(two)


def test_the_forecast_report_tests_the_training_period_of_a_sunspot_run(data_dir, capsys):
    config = _config("sunspots.py", data_dir)
    prepared = _prepared(config)
    _, values = sunspots_series()
    a = prepared.periods["train"][1]
    train = np.asarray(values, np.float64)[:a]
    np.testing.assert_allclose(prepared.train_values[:, 0], train, rtol=1e-12)
    # The report reads only the config and the prepared data: no model is needed.
    run = SimpleNamespace(config=config, prepared=prepared)
    capsys.readouterr()  # what preparing the dataset printed
    report = ForecastReport()
    assert report.applies(run)
    entries = report.summary(run, None, [])
    assert entries["train/adf_pvalue"] == stationarity.adf_test(train).pvalue
    assert entries["train/adf_pvalue_model"] == stationarity.adf_test(np.diff(train)).pvalue
    report.check(run)  # prints the test when the run starts
    assert capsys.readouterr().out == stationarity.describe(entries) + "\n"
    assert stationarity.describe(entries).startswith("ADF test on the training period")


def test_log_needs_a_positive_series(data_dir):
    with pytest.raises(DataError, match="data.series.log needs positive values; 'sunspots'"):
        _prepared(_config("sunspots.py", data_dir, **{"data.series.log": True}))


def _elnino(data_dir: str, **overrides):
    series = {"data.name": "elnino", "data.series.season": 12, "data.series.log": True}
    return _config("sunspots.py", data_dir, **series, **overrides)


@pytest.mark.parametrize("difference", [False, True])
def test_log_windows_score_in_original_units(data_dir, difference):
    config = _elnino(data_dir, **{"data.series.difference": difference})
    prepared = _prepared(config)
    task = get_task(
        config.task,
        num_classes=None,
        output_shape=prepared.output_shape,
        log_levels=prepared.log_levels,
    )
    assert task.log_levels
    test = prepared.sources["test"]
    _, values = elnino_series()
    b = prepared.periods["test"][0]
    np.testing.assert_allclose(test.arrays["truth"][:, 0, 0], values[b:], rtol=1e-6)
    # The windows' own targets, read back, are the truth: a perfect forecast scores ~0.
    perfect = test.arrays["targets"].reshape(len(test), -1)
    metrics, _ = _eval_with_outputs(task, test, perfect)
    assert metrics["rmse"] < 1e-4 * np.std(values) and metrics["mape"] < 1e-4
    if difference:  # a change of 0 in log is the last value: exactly the naive forecast
        metrics, _ = _eval_with_outputs(task, test, np.zeros((len(test), 1)))
        assert metrics["rmse"] == pytest.approx(metrics["naive_rmse"], rel=1e-5)


def test_original_units_exponentiate_log_levels_by_hand():
    task = RegressionTask(output_shape=(1, 1), log_levels=True)
    batch = {
        "targets": jnp.zeros((1, 1, 1)),
        "truth": jnp.array([[[np.e**3]]]),
        "scale": jnp.array([[2.0]]),
        "offset": jnp.array([[1.0]]),  # log level: 0.5 * 2 + 1 = 2 -> e^2
        "mask": jnp.array([1.0]),
    }
    sums = task.eval_sums(jnp.array([[0.5]]), {}, batch)
    metrics = task.finalize(jax.tree.map(np.asarray, sums))
    assert metrics["mae"] == pytest.approx(np.e**3 - np.e**2, rel=1e-6)
