"""Per-parameter behaviour: optax equivalence of every optimizer and schedule, rule tables,
frozen parameters, layer-wise decay, unfreezing, BatchNorm policy, penalties, accumulation."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.config import base_config
from research.errors import ConfigError
from research.models import get_model
from research.optim import build_optimizer, build_schedule
from research.optim.layer_decay import depths, layer_multipliers
from research.optim.rules import resolve_rules

PARAMS = {
    "stage1": {"block1": {"conv": {"kernel": jnp.full((2, 2), 0.5)}}},
    "fc": {"kernel": jnp.full((2, 3), -0.3), "bias": jnp.full((3,), 0.2)},
    "head": {"kernel": jnp.full((3, 2), 0.1), "bias": jnp.zeros((2,))},
}


def _grads(i: int):
    return jax.tree.map(
        lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32) + i).reshape(p.shape), PARAMS
    )


def _config(total_steps=50, **optimizer):
    c = base_config()
    c.total_steps = total_steps
    c.optimizer.schedule = "constant"
    for key, value in optimizer.items():
        c.optimizer[key] = value
    return c


def _updates(tx, steps=3, params=PARAMS):
    state = tx.init(params)
    out = []
    for i in range(steps):
        updates, state = tx.update(_grads(i), state, params)
        out.append(updates)
        params = optax.apply_updates(params, updates)
    return out, state


NO_DECAY = {"fc": {"kernel": True, "bias": False}, "head": {"kernel": True, "bias": False}}
NO_DECAY["stage1"] = {"block1": {"conv": {"kernel": True}}}


@pytest.mark.parametrize(
    "name,reference",
    [
        ("sgd", lambda: optax.sgd(0.1)),
        ("momentum", lambda: optax.sgd(0.1, momentum=0.9)),
        ("nesterov", lambda: optax.sgd(0.1, momentum=0.9, nesterov=True)),
        ("adam", lambda: optax.adam(0.1, b1=0.9, b2=0.999, eps=1e-8)),
        ("adamw", lambda: optax.adamw(0.1, eps=1e-8, weight_decay=0.05, mask=NO_DECAY)),
        ("rmsprop", lambda: optax.rmsprop(0.1, decay=0.9, eps=1e-8)),
        ("adagrad", lambda: optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-8)),
        ("adadelta", lambda: optax.adadelta(0.1, rho=0.95, eps=1e-8)),
    ],
)
def test_every_optimizer_matches_optax(name, reference):
    decay = 0.05 if name == "adamw" else 0.0
    ours = build_optimizer(_config(name=name, learning_rate=0.1, weight_decay=decay), PARAMS)
    got, _ = _updates(ours.tx)
    want, _ = _updates(reference())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _opt(schedule, **kw):
    c = _config(total_steps=100, learning_rate=0.5, schedule=schedule)
    for key, value in kw.items():
        c.optimizer[key] = value
    return c.optimizer


@pytest.mark.parametrize(
    "opt,reference",
    [
        (_opt("step", decay_every_steps=30, decay_rate=0.1), lambda s: 0.5 * 0.1 ** (s // 30)),
        (
            _opt("exponential", decay_every_steps=10, hold_steps=20, decay_rate=math.exp(-0.1)),
            lambda s: 0.5 if s < 20 else 0.5 * math.exp(-0.1 * (s - 20) / 10),
        ),
        (
            _opt("cosine", end_lr_factor=0.1),
            lambda s: 0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 100))),
        ),
        (_opt("linear", end_lr_factor=0.0), lambda s: 0.5 * (1 - s / 100)),
        (
            _opt("cyclic", cycle_steps=25, end_lr_factor=0.2),
            lambda s: 0.1 + 0.4 * (1 - abs((s / 25) % 2 - 1)),
        ),
        (
            _opt("linear", warmup_steps=10),
            lambda s: 0.05 * s if s < 10 else 0.5 * (1 - (s - 10) / 90),
        ),
    ],
    ids=["step", "hold_then_exp", "cosine", "linear", "cyclic", "warmup_linear"],
)
def test_schedules_match_closed_forms(opt, reference):
    schedule = build_schedule(opt, 100)
    for step in (0, 5, 10, 19, 20, 25, 30, 49, 50, 75, 99, 100):
        assert float(schedule(step)) == pytest.approx(reference(step), rel=1e-5, abs=1e-7), step


def test_schedule_missing_duration_is_config_error():
    with pytest.raises(ConfigError, match="decay_every_steps"):
        build_schedule(_opt("step"), 100)


def test_unmatched_parameter_is_a_clear_error():
    with pytest.raises(ConfigError, match="parameter 'fc/kernel' matches no entry"):
        resolve_rules(
            PARAMS,
            (
                (r"head/.*", "head", 1.0, True),
                (r".*bias", "b", 1.0, False),
                (r"stage1/.*", "s", 1.0, True),
            ),
        )


def test_frozen_parameter_has_zero_update_and_no_optimizer_state():
    c = _config(name="adam", learning_rate=0.1)
    c.param_rules = ((r"fc/.*", "frozen", 0.0, True), (r".*", "rest", 1.0, True))
    opt = build_optimizer(c, PARAMS)
    updates, state = _updates(opt.tx)
    for u in updates:
        assert not jnp.any(u["fc"]["kernel"]) and not jnp.any(u["fc"]["bias"])
        assert jnp.any(u["head"]["kernel"] != 0)
    state_shapes = [x.shape for x in jax.tree.leaves(state)]
    assert (2, 3) not in state_shapes  # fc/kernel has no Adam moments
    assert state_shapes.count((3, 2)) == 2  # head/kernel has mu and nu


def test_layer_decay_multipliers_for_a_known_tree():
    paths = [
        "stem/kernel",
        "stage1/block1/conv/kernel",
        "stage1/block2/conv/kernel",
        "stage2/block1/conv/kernel",
        "fc/kernel",
        "head/kernel",
    ]
    assert depths(paths) == dict(zip(paths, [0, 1, 2, 3, 4, 5], strict=True))
    mult = layer_multipliers(paths, 0.5)
    assert [mult[p] for p in paths] == [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]


def test_layer_decay_scales_sgd_updates():
    c = _config(name="sgd", learning_rate=0.1, layer_decay=0.5)
    updates, _ = _updates(build_optimizer(c, PARAMS).tx, steps=1)
    g = _grads(0)
    # stage1 (depth 1), fc (2), head (3): multipliers 1/4, 1/2, 1.
    np.testing.assert_allclose(
        updates[0]["stage1"]["block1"]["conv"]["kernel"],
        -0.1 * 0.25 * g["stage1"]["block1"]["conv"]["kernel"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        updates[0]["fc"]["kernel"], -0.1 * 0.5 * g["fc"]["kernel"], rtol=1e-6
    )
    np.testing.assert_allclose(updates[0]["head"]["kernel"], -0.1 * g["head"]["kernel"], rtol=1e-6)


def test_unfreezing_gates_groups_by_step():
    c = _config(name="momentum", learning_rate=0.1)
    c.param_rules = ((r"head/.*", "head", 1.0, True), (r".*", "body", 1.0, True))
    c.unfreeze.groups, c.unfreeze.at_steps = ("body",), (2,)
    opt = build_optimizer(c, PARAMS)
    updates, _ = _updates(opt.tx, steps=4)
    body = [float(jnp.abs(u["fc"]["kernel"]).sum()) for u in updates]
    head = [float(jnp.abs(u["head"]["kernel"]).sum()) for u in updates]
    assert body[0] == body[1] == 0 and body[2] > 0 and body[3] > 0
    assert all(h > 0 for h in head)
    # The gated body built no momentum while frozen: its first update is plain -lr * g.
    np.testing.assert_allclose(
        updates[2]["fc"]["kernel"], -0.1 * _grads(2)["fc"]["kernel"], rtol=1e-6
    )
    assert float(opt.trainable(jnp.int32(1))["fc/kernel"]) == 0.0
    assert float(opt.trainable(jnp.int32(2))["fc/kernel"]) == 1.0


def test_unfreeze_of_unknown_group_is_config_error():
    c = _config()
    c.unfreeze.groups, c.unfreeze.at_steps = ("encoder",), (5,)
    with pytest.raises(ConfigError, match="unfreeze.groups names encoder"):
        build_optimizer(c, PARAMS)


def test_l1_l2_penalty_skips_biases():
    c = _config()
    c.regularization.l1, c.regularization.l2 = 0.01, 0.1
    penalty = build_optimizer(c, PARAMS).regularizer(PARAMS)
    weights = [
        PARAMS["stage1"]["block1"]["conv"]["kernel"],
        PARAMS["fc"]["kernel"],
        PARAMS["head"]["kernel"],
    ]
    l1 = sum(float(jnp.abs(w).sum()) for w in weights)
    l2 = sum(float(jnp.square(w).sum()) for w in weights)
    assert float(penalty) == pytest.approx(0.01 * l1 + 0.5 * 0.1 * l2, rel=1e-6)
    assert build_optimizer(_config(), PARAMS).regularizer is None


def test_gradient_accumulation_equals_one_big_step():
    accumulated = build_optimizer(
        _config(name="momentum", learning_rate=0.1, accumulate_steps=2), PARAMS
    ).tx
    single = build_optimizer(_config(name="momentum", learning_rate=0.1), PARAMS).tx
    s_acc, s_one = accumulated.init(PARAMS), single.init(PARAMS)
    g0, g1 = _grads(0), _grads(1)
    u_a, s_acc = accumulated.update(g0, s_acc, PARAMS)
    assert not any(jnp.any(x) for x in jax.tree.leaves(u_a))  # nothing applied mid-accumulation
    u_a, s_acc = accumulated.update(g1, s_acc, PARAMS)
    u_o, _ = single.update(jax.tree.map(lambda a, b: (a + b) / 2, g0, g1), s_one, PARAMS)
    for a, b in zip(jax.tree.leaves(u_a), jax.tree.leaves(u_o), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("policy", ["frozen", "update"])
def test_batch_norm_statistics_of_frozen_parts(policy):
    from research.tasks import ClassificationTask
    from research.train.state import make_init_fn
    from research.train.step import make_train_step
    from research.train.step_parts import FrozenStatistics, default_parts

    model = get_model({"name": "cnn_tiny", "batch_norm": True}, num_classes=10)
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
    c = _config(name="sgd", learning_rate=0.1)
    c.param_rules = ((r"stage1/.*", "stage1", 0.0, True), (r".*", "rest", 1.0, True))
    opt = build_optimizer(c, params)
    state = make_init_fn(model, opt.tx, x)(jax.random.PRNGKey(0))
    parts = default_parts(ClassificationTask(10), opt)
    if policy == "update":  # the frozen parts' statistics follow the batches too
        parts = tuple(p for p in parts if not isinstance(p, FrozenStatistics))
    step = jax.jit(make_train_step(model, ClassificationTask(10), opt, parts))
    new, _ = step(state, {"image": x, "label": jnp.arange(8) % 10})
    frozen_same = jnp.array_equal(
        new.batch_stats["stage1"]["block1"]["bn"]["mean"],
        state.batch_stats["stage1"]["block1"]["bn"]["mean"],
    )
    assert bool(frozen_same) == (policy == "frozen")
    assert not jnp.array_equal(
        new.batch_stats["stage2"]["block1"]["bn"]["mean"],
        state.batch_stats["stage2"]["block1"]["bn"]["mean"],
    )
    assert jnp.array_equal(
        new.params["stage1"]["block1"]["conv"]["kernel"],
        state.params["stage1"]["block1"]["conv"]["kernel"],
    )


def test_adam_of_a_late_group_starts_afresh():
    c = _config(name="adam", learning_rate=0.1)
    c.param_rules = ((r"head/.*", "head", 1.0, True), (r".*", "body", 1.0, True))
    c.unfreeze.groups, c.unfreeze.at_steps = ("body",), (5,)
    updates, _ = _updates(build_optimizer(c, PARAMS).tx, steps=6)
    # At step 5 the body's first Adam update is that of a new optimizer: bias correction from 1.
    g5 = _grads(5)["fc"]["kernel"]
    first = optax.adam(0.1)
    expected, _ = first.update({"w": g5}, first.init({"w": g5}))
    np.testing.assert_allclose(updates[5]["fc"]["kernel"], expected["w"], rtol=1e-5)
    assert all(not jnp.any(u["fc"]["kernel"]) for u in updates[:5])


def test_accumulation_keeps_no_buffers_for_frozen_parameters():
    c = _config(name="adam", learning_rate=0.1, accumulate_steps=2)
    c.param_rules = ((r"fc/.*", "frozen", 0.0, True), (r".*", "rest", 1.0, True))
    _, state = _updates(build_optimizer(c, PARAMS).tx, steps=2)
    assert (2, 3) not in [x.shape for x in jax.tree.leaves(state)]


@pytest.mark.parametrize(
    "groups,starts,message",
    [
        (("body",), (-1,), "must be in [0, 50)"),
        (("body",), (50,), "must be in [0, 50)"),
        (("body", "head"), (20, 10), "non-decreasing"),
        (("body", "body"), (10, 20), "more than once"),
    ],
)
def test_bad_unfreeze_schedules_are_config_errors(groups, starts, message):
    c = _config()
    c.param_rules = ((r"head/.*", "head", 1.0, True), (r".*", "body", 1.0, True))
    c.unfreeze.groups, c.unfreeze.at_steps = groups, starts
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_optimizer(c, PARAMS)
