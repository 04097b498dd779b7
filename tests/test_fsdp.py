"""Fully sharded data parallelism: the state split over `fsdp` computes what one device does,
holds 1/F of the bytes per device, and checkpoints move between mesh shapes unchanged."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from train_cli import one_error_line, train

from research.checkpoint import Checkpointer
from research.config import base_config
from research.errors import ConfigError
from research.models import get_model
from research.optim import build_optimizer
from research.parallel import Parallel
from research.sharding import FSDP_AXIS, shard_axis, state_specs
from research.tracking import read_metrics
from research.train.state import make_init_fn


def test_the_largest_divisible_axis_is_split_and_rules_override_it():
    assert shard_axis((3, 3, 64, 128), 8) == 3
    assert shard_axis((64, 10), 8) == 0
    assert shard_axis((10,), 8) is None and shard_axis((64, 10), 1) is None
    state = {
        "step": np.zeros((), np.int32),
        "rng": np.zeros((8,), np.uint32),
        "params": {"dense": {"kernel": np.zeros((64, 16)), "bias": np.zeros((16,))}},
    }
    specs = state_specs(state, 8)
    assert specs["step"] == PartitionSpec() and specs["rng"] == PartitionSpec()
    assert specs["params"]["dense"]["kernel"] == PartitionSpec(FSDP_AXIS)
    ruled = state_specs(state, 8, [("kernel", 1), ("bias", -1)])
    assert ruled["params"]["dense"]["kernel"] == PartitionSpec(None, FSDP_AXIS)
    assert ruled["params"]["dense"]["bias"] == PartitionSpec()
    with pytest.raises(ConfigError, match="params/dense/kernel has shape"):
        state_specs(state, 8, [("kernel", 2)])


@pytest.mark.parametrize(
    "mode,fsdp,message",
    [("pmap", 2, "pmap is data-parallel only"), ("jit", 3, "must divide the number of devices")],
)
def test_impossible_meshes_are_config_errors(mode, fsdp, message):
    with pytest.raises(ConfigError, match=message):
        Parallel.create(mode, fsdp=fsdp)


def _adam_state_shapes(model_config: dict, shape: tuple[int, ...]):
    model = get_model(model_config, num_classes=1000)
    sample = jax.ShapeDtypeStruct((1, *shape), np.float32)
    config = base_config()
    config.total_steps, config.optimizer.name = 10, "adam"
    rng = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda x: model.init(rng, x, train=False), sample)["params"]
    optimizer = build_optimizer(config, params)
    init_fn = make_init_fn(model, optimizer.tx, np.zeros((1, *shape), np.float32))
    return jax.eval_shape(init_fn, rng)


def _bytes_per_device(par: Parallel, state) -> int:
    """Bytes of params + optimizer state on one device, from the shardings alone."""
    shardings = par.state_sharding(state)
    total = 0
    for field in ("params", "opt_state"):
        leaves = jax.tree.leaves(getattr(state, field))
        for leaf, sharding in zip(leaves, jax.tree.leaves(getattr(shardings, field)), strict=True):
            total += int(np.prod(sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
    return total


@pytest.mark.parametrize("name,shape", [("vgg16", (32, 32, 3)), ("resnet50", (32, 32, 3))])
def test_bytes_per_device_fall_by_the_fsdp_factor(name, shape):
    state = _adam_state_shapes({"name": name}, shape)
    whole = _bytes_per_device(Parallel.create("jit", 8), state)
    for fsdp in (2, 4, 8):
        part = _bytes_per_device(Parallel.create("jit", 8, fsdp=fsdp), state)
        # Only small arrays with no axis that fsdp divides stay whole.
        assert whole / fsdp <= part < 1.01 * whole / fsdp, (fsdp, part, whole)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_a_run_stopped_on_one_mesh_resumes_on_others(tmp_path, data_dir):
    """Train on data 2 x fsdp 4, stop at step 27, resume on fsdp 8 (and the uninterrupted
    data-parallel run on 8 devices for reference): the losses agree to float rounding, and the
    resumed run continues from exactly the saved state."""
    reference = train(tmp_path / "dp", data_dir)
    assert reference.returncode == 0, reference.stderr
    first = train(
        tmp_path / "fsdp", data_dir, "parallel.fsdp=4", signal_at=("SIGTERM", "step", "27")
    )
    assert first.returncode == 75, first.stderr
    manifest = json.loads((tmp_path / "fsdp" / "manifest.json").read_text())
    assert manifest["mesh_shape"] == {"data": 2, FSDP_AXIS: 4}
    second = train(tmp_path / "fsdp", data_dir, "parallel.fsdp=8")
    assert second.returncode == 0, second.stderr
    assert "resuming from step 27" in second.stdout
    losses, expected = _losses(tmp_path / "fsdp"), _losses(tmp_path / "dp")
    assert sorted(losses) == sorted(expected) == list(range(1, 61))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 61)], [expected[s] for s in range(1, 61)], rtol=1e-5
    )


def test_fsdp_with_pmap_is_refused_in_one_line(tmp_path, data_dir):
    result = train(tmp_path / "run", data_dir, "parallel.mode=pmap", "parallel.fsdp=2")
    one_error_line(result, "pmap is data-parallel only")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_moves_between_mesh_shapes_unchanged(tmp_path):
    state = _adam_state_shapes({"name": "mlp_tiny"}, (8, 8, 1))
    rng = jax.random.PRNGKey(0)
    values = jax.tree.map(
        lambda s: (
            jax.random.normal(rng, s.shape).astype(s.dtype)
            if jax.numpy.issubdtype(s.dtype, jax.numpy.floating)
            else jax.numpy.zeros(s.shape, s.dtype)
        ),
        state,
    )
    source = Parallel.create("jit", 8, fsdp=4)
    saved = jax.device_put(values, source.state_sharding(values))
    assert any(FSDP_AXIS in str(x.sharding.spec) for x in jax.tree.leaves(saved))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, saved)
        ckpt.wait()
    for target in (Parallel.create("jit", 1), Parallel.create("jit", 8, fsdp=8)):
        abstract = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            state,
            target.state_sharding(state),
        )
        with Checkpointer(tmp_path) as ckpt:
            restored, _, _ = ckpt.restore(abstract, 1)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(values), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
