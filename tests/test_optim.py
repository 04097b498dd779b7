"""Schedules and optimizers from `config.optimizer`, checked against closed forms and NumPy.

Each optimizer is built through `build_optimizer` with a constant schedule, stepped a few times on
a small pytree with fixed gradients, and compared with the update rule written out here in NumPy
(the formulas optax documents: trace `v = g + m v`, Nesterov `g + m v_new`, Adam with bias
correction and eps outside the square root, AdamW with decoupled decay `lr * wd * p`).
"""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.config import base_config
from research.errors import ConfigError
from research.optim import build_optimizer, build_schedule

LR = 0.1
PARAMS = {"w": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), "b": np.array([0.3], np.float32)}
GRADS = [
    {"w": np.array([[0.1, -0.2], [0.3, 0.05]], np.float32), "b": np.array([-0.4], np.float32)},
    {"w": np.array([[-0.3, 0.1], [0.2, -0.6]], np.float32), "b": np.array([0.2], np.float32)},
    {"w": np.array([[0.7, 0.4], [-0.1, 0.2]], np.float32), "b": np.array([0.9], np.float32)},
]


def _opt(**overrides):
    """`config.optimizer` with the base defaults, a constant schedule and `overrides`."""
    opt = base_config().optimizer
    opt.schedule = "constant"
    opt.learning_rate = LR
    for key, value in overrides.items():
        opt[key] = value
    return opt


def _full_config(opt, total_steps=100):
    """A whole config (what build_optimizer reads) around the optimizer section `opt`."""
    config = base_config()
    config.optimizer = opt
    config.total_steps = total_steps
    return config


def _run(opt, grads=GRADS, params=PARAMS):
    """Apply `grads` in turn through the chain built from `opt`; the params after each step."""
    params = {k: jnp.asarray(v) for k, v in params.items()}
    tx = build_optimizer(_full_config(opt), params).tx
    state = tx.init(params)
    history = []
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, updates)
        history.append({k: np.asarray(v) for k, v in params.items()})
    return history


def _reference(step_fn, grads=GRADS, params=PARAMS):
    """The same trajectory in NumPy float64; `step_fn(p, g, state, t) -> (p, state)` per leaf."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    states = {k: None for k in params}
    history = []
    for t, g in enumerate(grads, start=1):
        for k in params:
            params[k], states[k] = step_fn(params[k], g[k].astype(np.float64), states[k], t)
        history.append(dict(params))
    return history


def _assert_same(got, want):
    assert len(got) == len(want)
    for got_step, want_step in zip(got, want, strict=True):
        for k in want_step:
            np.testing.assert_allclose(got_step[k], want_step[k], rtol=1e-6, atol=1e-6)


# --- schedules --------------------------------------------------------------------------------


def _cosine_opt(warmup, end_lr_factor=0.1, peak=0.4):
    opt = base_config().optimizer
    opt.schedule = "warmup_cosine"
    opt.learning_rate = peak
    opt.warmup_steps = warmup
    opt.end_lr_factor = end_lr_factor
    return opt


def test_warmup_cosine_key_points():
    peak, factor, warmup, total = 0.4, 0.1, 10, 110
    sched = build_schedule(_cosine_opt(warmup, factor, peak), total)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(peak * 5 / warmup, rel=1e-6)
    assert float(sched(warmup)) == pytest.approx(peak, rel=1e-6)
    assert float(sched(total)) == pytest.approx(factor * peak, rel=1e-6)
    # Cosine midpoint: end + (peak - end) * (1 + cos(pi / 2)) / 2 = (peak + end) / 2.
    assert float(sched(warmup + (total - warmup) // 2)) == pytest.approx(
        (peak + factor * peak) / 2, rel=1e-6
    )


def test_warmup_cosine_closed_form_at_quarter():
    peak, factor, warmup, total = 0.4, 0.1, 10, 110
    sched = build_schedule(_cosine_opt(warmup, factor, peak), total)
    step = warmup + 25  # a quarter of the 100 decay steps
    end = factor * peak
    want = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * 25 / 100))
    assert float(sched(step)) == pytest.approx(want, rel=1e-6)


def test_warmup_cosine_without_warmup_starts_at_peak():
    for warmup in (None, 0):
        sched = build_schedule(_cosine_opt(warmup, end_lr_factor=0.0, peak=0.4), 100)
        assert float(sched(0)) == pytest.approx(0.4, rel=1e-6)
        assert float(sched(50)) == pytest.approx(0.2, rel=1e-6)
        assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_constant_schedule():
    sched = build_schedule(_opt(learning_rate=0.03), 100)
    assert [float(sched(s)) for s in (0, 1, 50, 100)] == pytest.approx([0.03] * 4, rel=1e-6)


@pytest.mark.parametrize("warmup", [100, 150])
def test_warmup_not_below_total_steps_is_config_error(warmup):
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_schedule(_cosine_opt(warmup), 100)


def test_unknown_schedule_is_config_error():
    with pytest.raises(ConfigError, match="'linear_zigzag'"):
        build_schedule(_opt(schedule="linear_zigzag"), 100)


def test_unknown_optimizer_is_config_error():
    with pytest.raises(ConfigError, match="'lion9000'"):
        build_optimizer(_full_config(_opt(name="lion9000")), PARAMS)


# --- optimizers -------------------------------------------------------------------------------


def test_sgd_matches_numpy():
    def step(p, g, state, t):
        return p - LR * g, state

    _assert_same(_run(_opt(name="sgd")), _reference(step))


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_numpy(nesterov):
    m = 0.8

    def step(p, g, v, t):
        v = g + m * (0.0 if v is None else v)
        direction = g + m * v if nesterov else v
        return p - LR * direction, v

    name = "nesterov" if nesterov else "momentum"
    _assert_same(_run(_opt(name=name, momentum=m)), _reference(step))


def _adam_step(b1, b2, eps, wd=0.0):
    def step(p, g, state, t):
        mu, nu = state if state is not None else (np.zeros_like(p), np.zeros_like(p))
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * g**2
        mu_hat, nu_hat = mu / (1 - b1**t), nu / (1 - b2**t)
        direction = mu_hat / (np.sqrt(nu_hat) + eps) + wd * p
        return p - LR * direction, (mu, nu)

    return step


def test_adam_matches_numpy():
    # eps large enough that putting it inside the square root would change the result.
    opt = _opt(name="adam", b1=0.8, b2=0.9, eps=1e-2)
    _assert_same(_run(opt), _reference(_adam_step(0.8, 0.9, 1e-2)))


def test_adamw_matches_numpy_with_decoupled_decay():
    opt = _opt(name="adamw", b1=0.8, b2=0.9, eps=1e-3, weight_decay=0.5)
    _assert_same(_run(opt), _reference(_adam_step(0.8, 0.9, 1e-3, wd=0.5)))


# --- gradient clipping ------------------------------------------------------------------------


def _global_norm(tree):
    return math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in tree.values()))


def test_clipping_scales_large_gradients_to_the_threshold():
    g = GRADS[2]
    norm = _global_norm(g)
    clip = norm / 4
    (got,) = _run(_opt(name="sgd", grad_clip_norm=clip), grads=[g])
    for k in PARAMS:
        want = PARAMS[k] - LR * g[k] * clip / norm
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)
    moved = {k: (got[k] - PARAMS[k]) / LR for k in PARAMS}
    assert _global_norm(moved) == pytest.approx(clip, rel=1e-5)


def test_clipping_leaves_small_gradients_untouched():
    g = GRADS[0]
    (got,) = _run(_opt(name="sgd", grad_clip_norm=_global_norm(g) * 2), grads=[g])
    for k in PARAMS:
        np.testing.assert_allclose(got[k], PARAMS[k] - LR * g[k], rtol=1e-6, atol=1e-6)
