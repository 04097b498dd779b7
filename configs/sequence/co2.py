"""Weekly Mauna Loa CO2 (1958-2001, 59 weekly gaps): four-week-ahead direct forecasts by a stacked
LSTM and an LSTM->GRU hybrid, against the naive, seasonal-naive (52 weeks) and linear AR baselines.

The series has a trend and a yearly cycle. Gaps are filled by linear interpolation within each
chronological period (70/15/15) and windows whose origin or targets fall on a gap are left out
(all 59 gaps are in the training period: 1439 of its 1543 windows remain); the model predicts
the change from the last observed week (`data.series.difference`, configurable) from a 52-week
window, and every metric is in ppm.

Commands:
    python launch/train.py --config=configs/sequence/co2.py --workdir=runs/co2/lstm
    python launch/train.py --config=configs/sequence/co2.py:hybrid --workdir=runs/co2/hybrid
    python launch/sweep.py --config=configs/sequence/co2.py --workdir=runs/co2 --parallel=2
    python launch/report.py runs/co2 --metric=test/rmse --metric=test/naive_rmse \\
        --metric=test/seasonal_naive_rmse --metric=test/ar_rmse
Expanding-window validation (5 folds over the train+eval period):
    python launch/sweep.py --config=configs/sequence/co2.py:cv --workdir=runs/co2_cv

Expected result (seeds 0-2, 2-core CPU, 35-45 s of training each): test RMSE over the four
horizons, ppm: stacked LSTM 0.503 +- 0.048 (0.470, 0.481, 0.559), hybrid 0.472 +- 0.036 (0.445,
0.459, 0.513), against naive 0.929, seasonal naive 1.892 and linear AR(52) 0.553: the hybrid
beats all three baselines on every seed, the stacked LSTM on seeds 0 and 1 (seed 2 is above the
AR). ADF test of the training period: levels p = 0.85 (the trend is a unit root), differences
p = 2.3e-21. Modelling log(ppm) as well (`--config.data.series.log=True`, hybrid): 0.471 +- 0.031.
"""

from pathlib import Path

import ml_collections

from research.config import config_function

_sunspots = Path(__file__).with_name("sunspots.py")
sunspots_config = config_function(_sunspots, "get_config")
sunspots_sweep = config_function(_sunspots, "get_sweep")
CELLS = (("lstm", "lstm"), ("lstm", "gru"))  # stacked LSTM, LSTM -> GRU hybrid


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: lstm (default) | hybrid | cv, as in the sunspots config."""
    c = sunspots_config(arg)
    c.data.name = "co2"
    c.data.series.input_steps = 52
    c.data.series.horizon = 4
    c.data.series.season = 52
    c.data.series.difference = True
    c.total_epochs = 30.0
    c.model.dropout_rate = 0.2  # the material's, for both models (not tuned on this series)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """Both models over 3 seeds (with "cv", the sunspots config's validation grid)."""
    if arg == "cv":
        return sunspots_sweep(arg)
    return [{"model.cell": cell, "seed": seed} for cell in CELLS for seed in (0, 1, 2)]
