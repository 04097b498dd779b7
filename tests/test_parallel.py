"""jit vs pmap, 1 vs 8 devices: the same losses and parameters to float rounding; one trace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.config import base_config
from research.models import get_model
from research.optim import build_optimizer
from research.optim.mixup import make_batch_mixer
from research.parallel import Parallel
from research.sharding import FSDP_AXIS
from research.tasks import ClassificationTask
from research.train.state import make_init_fn
from research.train.step import make_eval_step, make_train_step
from research.train.step_parts import BatchMix, default_parts

STEPS, BATCH = 24, 16


def _data():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(STEPS, BATCH, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=(STEPS, BATCH)).astype(np.int32)
    return images, labels


def _setup(mode: str, num_devices: int, fsdp: int = 1):
    par = Parallel.create(mode, num_devices, fsdp=fsdp)
    model = get_model(
        {"name": "cnn_tiny", "batch_norm": True, "dropout_rate": 0.0, "head_dropout_rate": 0.0},
        num_classes=10,
        bn_axis_name=par.axis_name,
    )
    config = base_config()
    config.total_steps = STEPS
    config.optimizer.name, config.optimizer.learning_rate = "momentum", 0.1
    config.optimizer.warmup_steps = 4
    sample = jnp.zeros((1, 8, 8, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample, train=False))
    optimizer = build_optimizer(config, params["params"])
    task = ClassificationTask(num_classes=10)
    init_fn = make_init_fn(model, optimizer.tx, sample)
    state = par.to_device(par.init_state(init_fn, jax.random.PRNGKey(0)))
    return par, model, task, optimizer, state


def _train(mode: str, num_devices: int, mixup: str = "none", fsdp: int = 1):
    chex.clear_trace_counter()  # each call builds (and may trace) its own step once
    par, model, task, optimizer, state = _setup(mode, num_devices, fsdp)
    parts = default_parts(task, optimizer)
    if mixup != "none":
        mixer = make_batch_mixer(
            mixup,
            alpha=0.4,
            per_example=True,
            num_classes=10,
            label_smoothing=0.1,
            num_shards=par.num_devices,
            axis_name=par.axis_name,
        )
        parts = (*parts, BatchMix(mixer))
    step_fn = chex.assert_max_traces(
        make_train_step(model, task, optimizer, parts, axis_name=par.axis_name), n=1
    )
    train_step = par.compile_train_step(step_fn, par.state_sharding(state))
    images, labels = _data()
    losses = []
    for i in range(STEPS):
        state, metrics = train_step(state, par.put_batch({"image": images[i], "label": labels[i]}))
        losses.append(par.to_host(metrics)["train/loss"])
    if fsdp > 1:  # the step kept the state split: not a replicated run in disguise
        assert any(FSDP_AXIS in tuple(x.sharding.spec) for x in jax.tree.leaves(state.params))
    eval_step = par.compile_eval_step(make_eval_step(model, task, axis_name=par.axis_name))
    mask = np.ones(BATCH, np.float32)
    mask[-3:] = 0  # padded examples must not count
    sums = par.to_host(
        eval_step(state, par.put_batch({"image": images[0], "label": labels[0], "mask": mask}))
    )
    return np.array(losses), jax.device_get(par.from_device(state)), sums


@pytest.fixture(scope="module")
def reference():
    return _train("jit", 1)


@pytest.mark.parametrize(
    "mode,num_devices,fsdp",
    [("jit", 8, 1), ("pmap", 8, 1), ("pmap", 1, 1), ("jit", 8, 8), ("jit", 8, 4)],
)
def test_same_result_on_any_device_count_and_driver(reference, mode, num_devices, fsdp):
    ref_losses, ref_state, ref_sums = reference
    losses, state, sums = _train(mode, num_devices, fsdp=fsdp)
    assert ref_losses[-1] < ref_losses[0]  # it learned something, so agreement is not vacuous
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert int(state.step) == STEPS
    assert sums["count"] == BATCH - 3
    np.testing.assert_allclose(sums["loss"], ref_sums["loss"], rtol=1e-5)
    np.testing.assert_array_equal(sums["confusion"], ref_sums["confusion"])


# CutMix is checked batch by batch in test_mixup.py: over a training run an ULP difference in a
# sampled lambda can move a box edge by one pixel, which is rounding, not a semantic difference.
@pytest.mark.parametrize("method", ["mixup"])
def test_mixing_within_shards_is_the_same_under_jit_and_pmap(method):
    jit_losses, jit_state, _ = _train("jit", 8, mixup=method)
    pmap_losses, pmap_state, _ = _train("pmap", 8, mixup=method)
    plain_losses, _, _ = _train("jit", 8)
    assert not np.allclose(jit_losses, plain_losses)  # the mixing really happened
    np.testing.assert_allclose(pmap_losses, jit_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(pmap_state), jax.tree.leaves(jit_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
