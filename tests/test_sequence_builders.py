"""Offline sequence builders: statsmodels series (sunspots, co2, elnino), adding, copy memory.

Each dataset is built into a temporary data dir through research.data.sources, which also checks
its OFFLINE_BUILDERS registration; contents are compared with statsmodels' own tables and with
layouts written out by hand.
"""

import numpy as np
import pytest
from statsmodels.datasets import co2, elnino, sunspots

from research.data import sources
from research.data.builders import series
from research.data.builders import synthetic_sequences as synth
from research.errors import ConfigError, DataError

SERIES_LENGTHS = {"sunspots": 309, "co2": 2284, "elnino": 732}
T = 50  # the smallest configs keep the file fast


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """One data dir shared by the module, so each dataset is built once."""
    return str(tmp_path_factory.mktemp("tfds"))


def _arrays(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
    return dict(sources.open_source(name, split, data_dir, in_memory=True).arrays)


def _statsmodels_values(name: str) -> np.ndarray:
    """The series as statsmodels ships it, flattened to time order, in float32."""
    if name == "sunspots":
        return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float32)
    if name == "co2":
        return co2.load_pandas().data["co2"].to_numpy(np.float32)
    table = elnino.load_pandas().data.drop(columns="YEAR")
    return np.concatenate([row.to_numpy(np.float32) for _, row in table.iterrows()])


# --- statsmodels series ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERIES_LENGTHS))
def test_series_info_and_values_match_statsmodels(name, data_dir):
    info = sources.dataset_info(name, data_dir)
    assert info.splits == {"train": SERIES_LENGTHS[name]}
    assert info.num_classes is None
    assert info.features == {
        "index": ((), "int64"),
        "time": ((), "float64"),
        "value": ((1,), "float32"),
    }
    arrays = _arrays(name, "train", data_dir)
    # Stored in time order: the i-th record is position i.
    np.testing.assert_array_equal(arrays["index"], np.arange(SERIES_LENGTHS[name]))
    assert np.all(np.diff(arrays["time"]) > 0)
    # assert_array_equal treats NaN as equal only at identical positions.
    np.testing.assert_array_equal(arrays["value"][:, 0], _statsmodels_values(name))


def test_co2_keeps_the_59_gaps_as_nan(data_dir):
    value = _arrays("co2", "train", data_dir)["value"][:, 0]
    gaps = co2.load_pandas().data["co2"].isna().to_numpy()
    assert gaps.sum() == 59
    np.testing.assert_array_equal(np.isnan(value), gaps)


@pytest.mark.parametrize(
    "name, first, last",
    [
        ("sunspots", 1700.0, 2008.0),
        # 1958-03-29 is day 88 of 365; 2001-12-29 is day 363 of 365.
        ("co2", 1958 + 87 / 365, 2001 + 362 / 365),
        # January 1950 to December 2010.
        ("elnino", 1950.0, 2010 + 11 / 12),
    ],
)
def test_series_time_is_decimal_year(name, first, last, data_dir):
    time = _arrays(name, "train", data_dir)["time"]
    assert time.dtype == np.float64
    assert time[0] == pytest.approx(first, abs=1e-12)
    assert time[-1] == pytest.approx(last, abs=1e-12)


def test_co2_weeks_and_leap_years(data_dir):
    time = _arrays("co2", "train", data_dir)["time"]
    # 1960-01-02 (a leap year's day 2) is 92 weeks after 1958-03-29.
    assert time[92] == pytest.approx(1960 + 1 / 366, abs=1e-12)
    # Consecutive samples are one week apart: 7/365 or 7/366 of a year, or a year boundary.
    steps = np.diff(time)
    assert np.all((steps > 6.9 / 366) & (steps < 7.1 / 365))


def test_elnino_flattens_years_row_major(data_dir):
    arrays = _arrays("elnino", "train", data_dir)
    table = elnino.load_pandas().data.set_index("YEAR")
    assert arrays["value"][12, 0] == np.float32(table.loc[1951.0, "JAN"])
    assert arrays["value"][13, 0] == np.float32(table.loc[1951.0, "FEB"])
    assert arrays["value"][-1, 0] == np.float32(table.loc[2010.0, "DEC"])
    assert arrays["time"][12] == 1951.0


def test_series_season_is_cited():
    seasons = {series.Sunspots: 11, series.Co2: 52, series.Elnino: 12}
    for builder, season in seasons.items():
        assert season == builder.SEASON
        assert f"Seasonal period: {season} " in builder._DESCRIPTION
    assert {b.name for b in seasons} == set(SERIES_LENGTHS)


# --- adding ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adding(data_dir) -> dict[str, dict[str, np.ndarray]]:
    """Every split of adding/t50, as arrays."""
    return {split: _arrays(f"adding/t{T}", split, data_dir) for split in synth.SPLIT_SIZES}


def test_adding_shapes(adding, data_dir):
    info = sources.dataset_info(f"adding/t{T}", data_dir)
    assert info.splits == {"train": 20000, "validation": 2000, "test": 2000}
    assert info.features == {"inputs": ((T, 2), "float32"), "target": ((), "float32")}
    assert [c.name for c in synth.Adding.BUILDER_CONFIGS] == ["t50", "t100", "t200", "t400"]
    assert synth.Adding.DEFAULT_BUILDER_CONFIG_NAME == "t100"


@pytest.mark.parametrize("split", ["train", "test"])
def test_adding_markers_and_target(adding, split):
    inputs, target = adding[split]["inputs"], adding[split]["target"]
    values, marker = inputs[..., 0], inputs[..., 1]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert set(np.unique(marker)) == {0.0, 1.0}
    np.testing.assert_array_equal(marker[:, : T // 2].sum(1), 1.0)
    np.testing.assert_array_equal(marker[:, T // 2 :].sum(1), 1.0)
    # Both halves' marker positions cover their whole range.
    first, second = marker[:, : T // 2].argmax(1), marker[:, T // 2 :].argmax(1)
    assert set(first) == set(range(T // 2)) and set(second) == set(range(T - T // 2))
    rows = np.arange(len(values))
    marked_sum = values[rows, first] + values[rows, T // 2 + second]
    np.testing.assert_allclose(target, marked_sum, atol=1e-6, rtol=0)


def test_adding_constant_predictor_scores_one_sixth(adding):
    mse = np.mean((adding["test"]["target"] - 1.0) ** 2)
    assert abs(mse - 1 / 6) < 0.01


def test_adding_build_is_deterministic_and_splits_differ(adding, tmp_path):
    for split in synth.SPLIT_SIZES:
        again = _arrays(f"adding/t{T}", split, str(tmp_path))
        for key in ("inputs", "target"):
            np.testing.assert_array_equal(again[key], adding[split][key])
    # Each split has its own seed: no test sequence appears in train.
    train_rows = set(map(bytes, adding["train"]["inputs"]))
    assert not train_rows.intersection(map(bytes, adding["test"]["inputs"]))


def test_adding_arrays_longer_configs():
    arrays = synth.adding_arrays(101, 500, np.random.default_rng(0))
    marker = arrays["inputs"][..., 1]
    # Odd T: the first half is [0, 50), the second [50, 101).
    np.testing.assert_array_equal(marker[:, :50].sum(1), 1.0)
    np.testing.assert_array_equal(marker[:, 50:].sum(1), 1.0)
    assert arrays["inputs"].shape == (500, 101, 2) and arrays["target"].dtype == np.float32


# --- copy memory ----------------------------------------------------------------------------


def test_copy_memory_layout(data_dir):
    info = sources.dataset_info(f"copy_memory/t{T}", data_dir)
    assert info.splits == {"train": 20000, "validation": 2000, "test": 2000}
    assert info.features == {"inputs": ((T + 20,), "int32"), "targets": ((T + 20,), "int32")}
    arrays = _arrays(f"copy_memory/t{T}", "train", data_dir)
    inputs, targets = arrays["inputs"], arrays["targets"]
    symbols = inputs[:, :10]
    assert symbols.min() == 1 and symbols.max() == 8
    np.testing.assert_array_equal(inputs[:, 10 : T + 9], 0)  # T - 1 blanks
    np.testing.assert_array_equal(inputs[:, T + 9], 9)
    np.testing.assert_array_equal(inputs[:, T + 10 :], 0)
    np.testing.assert_array_equal(targets[:, : T + 10], 0)
    np.testing.assert_array_equal(targets[:, T + 10 :], symbols)
    # Symbols are uniform over 1..8, so the memoryless baseline is 10 ln(8) / (T + 20).
    counts = np.bincount(symbols.ravel(), minlength=9)[1:] / symbols.size
    np.testing.assert_allclose(counts, 1 / 8, atol=0.005)


def test_copy_memory_matches_hand_written_example():
    delay = 3
    arrays = synth.copy_memory_arrays(delay, 4, np.random.default_rng(7))
    for inputs, targets in zip(arrays["inputs"], arrays["targets"], strict=True):
        symbols = list(inputs[:10])
        assert inputs.tolist() == symbols + [0, 0] + [9] + [0] * 10
        assert targets.tolist() == [0] * 13 + symbols
    assert synth.VOCAB_SIZE == synth.NUM_SYMBOLS + 2 == synth.DELIMITER + 1
    assert synth.BLANK == 0


def test_copy_memory_build_equals_its_generator(data_dir):
    built = _arrays(f"copy_memory/t{T}", "test", data_dir)
    direct = synth.copy_memory_split(T, "test")
    # The stored order follows TFDS's key hashing, so compare the sets of rows.
    for key in ("inputs", "targets"):
        assert sorted(map(bytes, built[key])) == sorted(map(bytes, direct[key]))


# --- errors ---------------------------------------------------------------------------------


def test_bad_input_gives_one_line_errors(data_dir):
    with pytest.raises(DataError, match="adding/t7"):
        sources.dataset_info("adding/t7", data_dir)
    with pytest.raises(ConfigError, match="T >= 2"):
        synth.adding_arrays(1, 3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="T >= 1"):
        synth.copy_memory_arrays(0, 3, np.random.default_rng(0))
    with pytest.raises(DataError, match="'dev'"):
        synth.adding_split(50, "dev")
