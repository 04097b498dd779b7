"""A run's learning curves (research/reporting/curves.py): losses and errors on a log axis unless
a value is not positive, accuracy-like metrics on a linear one."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from research.reporting import curves

STEPS = (50, 100, 200, 400, 800)


def _rows(**series: list[float]) -> list[dict]:
    """Metric records with `series` given as split_name=values, e.g. train_loss=[...]."""
    rows = [{"step": s} for s in STEPS]
    for key, values in series.items():
        split, name = key.split("_", 1)
        for row, value in zip(rows, values, strict=True):
            row[f"{split}/{name}"] = value
    return rows


def _scales(rows: list[dict]) -> dict[str, str]:
    """Each panel's title (the metric name) and its y scale."""
    fig = curves.learning_curves_figure(rows)
    return {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_title()}


def test_classification_losses_are_log_and_accuracy_linear():
    decay = [2.3, 0.4, 0.05, 0.004, 3e-4]
    scales = _scales(
        _rows(
            train_loss=decay,
            eval_loss=[2.0, 0.5, 0.1, 0.08, 0.09],
            train_accuracy=[0.1, 0.8, 0.97, 1.0, 1.0],
            eval_f1=[0.1, 0.7, 0.95, 0.98, 0.98],
            train_learning_rate=[1e-3, 1e-3, 5e-4, 1e-4, 0.0],
        )
    )
    assert scales == {
        "loss": "log",
        "accuracy": "linear",
        "f1": "linear",
        "learning_rate": "linear",
    }


def test_a_loss_with_a_value_at_or_below_zero_stays_linear():
    # A VAE's -ELBO under a Gaussian likelihood can go negative; a log axis would drop it.
    scales = _scales(
        _rows(
            train_loss=[50.0, 10.0, 1.0, -2.0, -5.0],
            eval_kl=[0.0, 3.0, 4.0, 4.5, 4.6],  # KL starts at exactly 0
            eval_mse=[0.2, 0.05, 0.01, 0.005, 0.004],
            eval_elbo=[-50.0, -10.0, -1.0, 2.0, 5.0],
            eval_reconstruction=[40.0, 8.0, 3.0, 2.0, 1.5],
        )
    )
    assert scales == {
        "loss": "linear",
        "kl": "linear",
        "mse": "log",
        "elbo": "linear",
        "reconstruction": "log",
    }


def test_sequence_and_forecasting_errors_are_log():
    scales = _scales(
        _rows(
            eval_perplexity=[30.0, 10.0, 4.0, 2.0, 1.5],
            eval_bits_per_token=[4.9, 3.3, 2.0, 1.0, 0.6],
            eval_naive_rmse=[1.0] * 5,
            eval_accuracy=[0.1, 0.3, 0.5, 0.6, 0.7],
        )
    )
    assert scales["perplexity"] == scales["bits_per_token"] == scales["naive_rmse"] == "log"
    assert scales["accuracy"] == "linear"


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        ("eval/loss", [1.0, 0.1, float("nan")], "log"),  # a diverged point does not decide
        ("eval/loss", [1.0, 0.0], "linear"),
        ("train/distill_kl", [0.5, 0.2], "log"),
        ("train/kl_weight", [0.5, 1.0], "linear"),
        ("eval/accuracy", [0.5, 0.9], "linear"),
    ],
)
def test_metric_yscale(metric, values, expected):
    ax = Figure().subplots()
    assert curves.set_metric_yscale(ax, metric, np.asarray(values)) == expected
    assert ax.get_yscale() == expected


def test_learning_curves_writes_the_figure(tmp_path):
    path = curves.learning_curves(_rows(train_loss=[1.0, 0.5, 0.2, 0.1, 0.05]), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
