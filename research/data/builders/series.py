"""Offline TFDS builders for three classic time series bundled with statsmodels (no download).

sunspots (yearly), co2 (weekly) and elnino (monthly) are small univariate series for forecasting
studies. Each dataset is one "train" split holding the whole series in time order, one example
per time step keyed by its position, so preparation code can split it by time itself. Gaps in
the source (co2) stay NaN: filling them is the preparation code's choice, not the dataset's.
"""

import abc

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from statsmodels.datasets import co2, elnino, sunspots

from research.data.builders.offline import OfflineBuilder

_STATSMODELS_DOCS = "https://www.statsmodels.org/stable/datasets/generated/{}.html"

_FEATURES_DOC = """
Features: `index` (int64, position 0..N-1), `time` (float64, decimal year) and `value`
(float32, shape (1,)). One split, "train", holds the whole series in time order.
"""


def sunspots_series() -> tuple[np.ndarray, np.ndarray]:
    """Decimal years (float64) and yearly sunspot numbers (float32), 1700-2008: 309 values."""
    frame = sunspots.load_pandas().data
    return frame["YEAR"].to_numpy(np.float64), frame["SUNACTIVITY"].to_numpy(np.float32)


def co2_series() -> tuple[np.ndarray, np.ndarray]:
    """Decimal years and weekly Mauna Loa CO2 (ppmv, float32, NaN at the 59 gaps): 2284 values.

    A date's decimal year is year + (day_of_year - 1) / days_in_that_year.
    """
    frame = co2.load_pandas().data
    dates = pd.DatetimeIndex(frame.index)
    days_in_year = np.where(dates.is_leap_year, 366.0, 365.0)
    time = dates.year.to_numpy(np.float64) + (dates.day_of_year.to_numpy() - 1) / days_in_year
    return time, frame["co2"].to_numpy(np.float32)


def elnino_series() -> tuple[np.ndarray, np.ndarray]:
    """Decimal years (year + month/12) and monthly sea-surface temperatures (float32), 732 values.

    The source is a table of years x months (JAN..DEC); rows are flattened in order, so value
    12 * i + m is month m (0 = January) of the i-th year.
    """
    frame = elnino.load_pandas().data
    table = frame.drop(columns="YEAR").to_numpy(np.float32)
    years = np.repeat(frame["YEAR"].to_numpy(np.float64), 12)
    months = np.tile(np.arange(12, dtype=np.float64), len(frame))
    return years + months / 12, table.reshape(-1)


class _SeriesBuilder(OfflineBuilder, skip_registration=True):
    """A univariate series as one time-ordered "train" split; subclasses name the series."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SEASON: int  # seasonal period in time steps, for configs to cite
    _DESCRIPTION: str  # what the series is and where it comes from
    _CITATION: str

    @abc.abstractmethod
    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """The time (decimal years) and value of every step, in time order."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self._DESCRIPTION + _FEATURES_DOC,
            features=tfds.features.FeaturesDict(
                {
                    "index": tfds.features.Scalar(dtype=np.int64),
                    # Stored as raw bytes: TFDS's default float encoding is float32, which
                    # would round weekly decimal years to about 1e-4 of a year.
                    "time": tfds.features.Tensor(
                        shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
                    ),
                    "value": tfds.features.Tensor(shape=(1,), dtype=np.float32),
                }
            ),
            homepage=_STATSMODELS_DOCS.format(self.name),
            # Store the examples in key (time) order instead of TFDS's hashed order.
            disable_shuffling=True,
            citation=self._CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data ships with statsmodels; nothing to download.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        time, value = self.series()
        for i, (t, v) in enumerate(zip(time, value, strict=True)):
            # The position is the key, so the time order is recoverable from the keys too.
            yield i, {"index": i, "time": float(t), "value": np.array([v], np.float32)}


class Sunspots(_SeriesBuilder):
    """Yearly sunspot numbers 1700-2008; defining this class registers "sunspots"."""

    SEASON = 11
    _DESCRIPTION = """\
Yearly sunspot numbers 1700-2008 (309 values) from the National Geophysical Data Center (NOAA),
as bundled with statsmodels (`statsmodels.api.datasets.sunspots`). Seasonal period: 11 years
(the solar cycle). `time` is the year.
"""
    _CITATION = """\
@misc{ngdc_sunspots,
  author = {{National Geophysical Data Center}},
  title = {Yearly sunspot numbers 1700-2008},
  howpublished = {http://www.ngdc.noaa.gov/stp/solar/solarda3.html}
}
"""

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """Years and yearly sunspot numbers."""
        return sunspots_series()


class Co2(_SeriesBuilder):
    """Weekly Mauna Loa CO2 1958-2001; defining this class registers "co2"."""

    SEASON = 52
    _DESCRIPTION = """\
Weekly atmospheric CO2 concentrations (ppmv) at Mauna Loa Observatory, Hawaii, from 1958-03-29
to 2001-12-29 (2284 weeks, 59 of them missing and kept as NaN), from the Scripps Institution of
Oceanography flask samples (Keeling and Whorf 2004) as bundled with statsmodels
(`statsmodels.api.datasets.co2`). Seasonal period: 52 weeks. `time` is
year + (day_of_year - 1) / days_in_year of the sample date.
"""
    _CITATION = """\
@incollection{keeling2004co2,
  author = {Keeling, C. D. and Whorf, T. P.},
  title = {Atmospheric CO2 concentrations derived from flask air samples at sites in the
           SIO network},
  booktitle = {Trends: A Compendium of Data on Global Change},
  publisher = {Carbon Dioxide Information Analysis Center, Oak Ridge National Laboratory},
  year = {2004}
}
"""

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """Decimal years and weekly CO2 (NaN at gaps)."""
        return co2_series()


class Elnino(_SeriesBuilder):
    """Monthly Nino 1+2 sea-surface temperatures 1950-2010; defining this registers "elnino"."""

    SEASON = 12
    _DESCRIPTION = """\
Monthly average sea-surface temperatures (degrees Celsius) of the Nino 1+2 region of the Pacific
Ocean, 1950-2010 (61 years x 12 months = 732 values), from NOAA's National Weather Service
(ERSST.V3B, Climate Prediction Center indices) as bundled with statsmodels
(`statsmodels.api.datasets.elnino`). Seasonal period: 12 months. `time` is year + month / 12
with month 0 = January.
"""
    _CITATION = """\
@misc{noaa_ersst_nino12,
  author = {{NOAA National Weather Service, Climate Prediction Center}},
  title = {ERSST.V3B monthly sea-surface temperature, Nino 1+2},
  howpublished = {http://www.cpc.ncep.noaa.gov/data/indices/}
}
"""

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """Decimal years and monthly sea-surface temperatures."""
        return elnino_series()
