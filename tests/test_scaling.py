"""research.analysis.scaling: power-law fits recover known laws, bootstrap intervals cover the
truth and are deterministic, and parameters, data and compute are counted from a workdir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from research.analysis import collect, scaling
from research.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
A, ALPHA, C = 3.0, 0.5, 0.1
RULES = """\
path                 shape     group     lr_mult  decay
dense/bias           64        no_decay  1        no
dense/kernel         3x3x1x64  default   1        yes
head/kernel          64x10     default   1        yes
temperature          ()        default   1        no
"""


def _synthetic(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two runs at each of 12 sizes over 4 decades, with multiplicative noise."""
    x = np.repeat(np.geomspace(1e3, 1e7, 12), 2)
    rng = np.random.default_rng(seed)
    return x, scaling.power_law(x, A, ALPHA, C) * np.exp(noise * rng.standard_normal(x.size))


def test_fit_recovers_exact_law() -> None:
    fit = scaling.fit_power_law(*_synthetic(noise=0.0))
    assert (fit.a, fit.alpha, fit.c) == pytest.approx((A, ALPHA, C), rel=1e-5)


def test_fit_recovers_law_under_noise() -> None:
    fit = scaling.fit_power_law(*_synthetic(noise=0.01))
    assert fit.alpha == pytest.approx(ALPHA, abs=0.03)
    assert fit.a == pytest.approx(A, rel=0.2)
    assert fit.c == pytest.approx(C, abs=0.01)


def test_bootstrap_covers_truth_narrowly_and_is_seeded() -> None:
    x, y = _synthetic(noise=0.01)
    fit = scaling.bootstrap(x, y, n_boot=200, seed=3)
    for name, truth in (("alpha", ALPHA), ("a", A), ("c", C)):
        low, high = fit.intervals[name]
        assert low <= truth <= high, name
    low, high = fit.intervals["alpha"]
    assert high - low < 0.1
    assert scaling.bootstrap(x, y, n_boot=200, seed=3) == fit
    assert scaling.bootstrap(x, y, n_boot=200, seed=4).intervals != fit.intervals


def test_too_few_sizes_is_an_error() -> None:
    with pytest.raises(ConfigError, match="3 distinct"):
        scaling.fit_power_law([10.0, 10.0, 100.0], [1.0, 1.1, 0.5])


def _run_dir(path: Path, width: int, loss: float, rules: str | None, summary_extra: dict) -> None:
    path.mkdir(parents=True)
    config = {"seed": 0, "batch_size": 8, "total_steps": 100, "model": {"width": width}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(json.dumps({"test/loss": loss, **summary_extra}))
    if rules is not None:
        (path / "param_rules.txt").write_text(rules)


def test_param_count_from_rules(tmp_path: Path) -> None:
    (tmp_path / "param_rules.txt").write_text(RULES)
    assert scaling.count_params_from_rules(tmp_path / "param_rules.txt") == 64 + 576 + 640 + 1


def test_params_data_compute_per_run(tmp_path: Path) -> None:
    _run_dir(tmp_path / "a", 1, 1.0, RULES, {})
    _run_dir(tmp_path / "b", 2, 0.5, None, {"params/count": 10, "compute/flops_per_step": 7.0})
    a, b = collect.collect(tmp_path)
    assert scaling.axis_values([a, b], "params").tolist() == [1281, 10]
    assert scaling.axis_values([a, b], "data").tolist() == [800, 800]
    # a: estimated as 6 * params * examples; b: recorded flops per step * steps
    assert scaling.axis_values([a, b], "compute").tolist() == [6 * 1281 * 800, 700]


def test_report_scaling_cli(tmp_path: Path) -> None:
    sizes = np.geomspace(1e3, 1e6, 6).astype(int)
    for i, n in enumerate(sizes):
        loss = float(scaling.power_law(n, A, ALPHA, C))
        _run_dir(tmp_path / f"r{i}", i, loss, None, {"params/count": int(n)})
    cmd = [sys.executable, str(REPO / "launch" / "report.py"), str(tmp_path)]
    cmd += ["--scaling=params", "--bootstrap=100"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "alpha = 0.5000 (95% CI [" in result.stdout
    assert (tmp_path / "report" / "scaling_params.png").stat().st_size > 0


def test_report_scaling_unfittable_writes_nothing(tmp_path: Path) -> None:
    _run_dir(tmp_path / "only", 1, 0.5, RULES, {})
    cmd = [sys.executable, str(REPO / "launch" / "report.py"), str(tmp_path), "--scaling=params"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "3 distinct sizes" in result.stderr
    assert not (tmp_path / "report").exists()
