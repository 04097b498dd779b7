"""Gradient diagnostics: per-module norms, update ratios, dead units; the per-module plot."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.optim.diagnostics import dead_units, gradient_diagnostics
from research.reporting import curves

GRADS = {
    "stage1": {"conv": {"kernel": jnp.full((2, 2), 3.0)}},
    "head": {"kernel": jnp.ones((4,)), "bias": jnp.full((1,), 2.0)},
}
PARAMS = jax.tree.map(lambda g: 10 * g, GRADS)
TABLE = [
    {"path": "stage1/conv/kernel", "group": "body"},
    {"path": "head/kernel", "group": "head"},
    {"path": "head/bias", "group": "head"},
]


def test_per_module_norms_and_group_update_ratios():
    updates = jax.tree.map(lambda g: -0.1 * g, GRADS)
    out = gradient_diagnostics(GRADS, updates, PARAMS, TABLE)
    assert float(out["grad_norm/stage1/conv"]) == pytest.approx(6.0)  # sqrt(4 * 9)
    assert float(out["grad_norm/head"]) == pytest.approx(np.sqrt(4 + 4))
    # update = -0.1 g and params = 10 g, so every group's ratio is 0.01.
    assert float(out["update_ratio/body"]) == pytest.approx(0.01)
    assert float(out["update_ratio/head"]) == pytest.approx(0.01)


def test_dead_units_need_zero_on_every_example():
    x = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])  # unit 0 is dead, units 1 and 2 are not
    images = jnp.zeros((2, 3, 3, 4)).at[:, :, :, 1].set(1.0)  # channels 0, 2, 3 dead
    out = dead_units({"layer1": x, "stage1": images, "scalar": jnp.float32(1.0)})
    assert float(out["dead_relu/layer1"]) == pytest.approx(1 / 3)
    assert float(out["dead_relu/stage1"]) == pytest.approx(3 / 4)
    assert "dead_relu/scalar" not in out


def test_dead_units_under_pmap_span_all_devices():
    # Unit 0 is zero on device 0's examples but not on device 1's: not dead globally.
    x = jnp.array([[[0.0, 0.0]], [[1.0, 0.0]]])
    out = jax.pmap(
        lambda a: dead_units({"h": a}, "data"), axis_name="data", devices=jax.devices()[:2]
    )(x)
    np.testing.assert_allclose(out["dead_relu/h"], [0.5, 0.5])


def test_gradient_norm_plot_orders_modules_by_depth(tmp_path: Path):
    rows = [
        {"step": s, "train/grad_norm/head": 1.0 / s, "train/grad_norm/stage1/conv": 1e-3 / s}
        for s in (1, 2, 3)
    ]
    assert curves.gradient_norms(rows, tmp_path / "g.png").stat().st_size > 0
    assert curves.gradient_norms([{"step": 1, "train/loss": 1.0}], tmp_path / "none.png") is None
