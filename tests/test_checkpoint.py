"""Checkpointer: exact round-trips of a TrainState-like tree, retention, resharding, atomicity."""

import json
import os
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from research.checkpoint import CheckpointDamagedError, Checkpointer, load_state
from research.errors import ConfigError, WorkdirError


@struct.dataclass
class _State:
    """Same field layout as the trainer's TrainState, so the test covers its pytree shape."""

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array
    extras: dict


def _make_state(seed: int = 0) -> _State:
    """A state with real optax states (namedtuples, EmptyState) and non-trivial values."""
    key = jax.random.PRNGKey(seed)
    params = {
        "dense": {"kernel": jax.random.normal(key, (8, 4)), "bias": jnp.arange(4.0)},
        "head": {"kernel": jnp.full((4, 2), seed + 0.5)},
    }
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = tx.init(params)
    # One real update so the moments are not all zeros and count is not 0.
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return _State(
        step=jnp.asarray(7 + seed, jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.linspace(0.0, 1.0, 4)}},
        opt_state=opt_state,
        rng=jax.random.PRNGKey(42 + seed),
        extras={"ema": {"w": jnp.ones((3,))}},
    )


def _abstract(tree, sharding_fn):
    """ShapeDtypeStructs carrying the shardings chosen by `sharding_fn(leaf)`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), tree
    )


def _single_device(_):
    return SingleDeviceSharding(jax.devices()[0])


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_with_data_state_and_metadata(tmp_path):
    state = _make_state()
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    ckpt.save(7, state, data_state={"epoch": 1, "index": 96}, metadata={"note": "hi"})
    ckpt.wait()
    restored, data_state, meta = ckpt.restore(_abstract(state, _single_device))
    ckpt.close()
    ckpt.close()  # idempotent

    _assert_trees_equal(restored, state)
    assert isinstance(restored, _State)
    assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)
    assert isinstance(restored.opt_state[0], optax.EmptyState)
    assert data_state == {"epoch": 1, "index": 96}
    assert meta["step"] == 7 and meta["note"] == "hi" and meta["wall_time"] > 0


def test_missing_data_state_restores_as_none_and_steps_are_listed(tmp_path):
    state = _make_state()
    with_sync = Checkpointer(tmp_path, keep=5, async_save=False)
    for step in (3, 1, 2):
        with_sync.save(step, state)
    with_sync.save(3, _make_state(seed=1))  # an existing step is left as it is
    assert with_sync.all_steps() == [1, 2, 3]
    assert with_sync.latest_step() == 3
    restored, data_state, _ = with_sync.restore(_abstract(state, _single_device), step=3)
    assert data_state is None
    _assert_trees_equal(restored, state)
    with pytest.raises(WorkdirError, match="step 4"):
        with_sync.restore(_abstract(state, _single_device), step=4)
    with_sync.close()


@pytest.mark.parametrize(
    ("mode", "values", "best"),
    [("max", [0.9, 0.1, 0.2, 0.3, 0.4], 1), ("min", [0.1, 0.9, 0.8, 0.7, 0.6], 1)],
)
def test_keeps_last_k_plus_best(tmp_path, mode, values, best):
    state = _make_state()
    ckpt = Checkpointer(tmp_path, keep=2, best_metric="eval/accuracy", best_mode=mode)
    for step, value in enumerate(values, start=1):
        ckpt.save(step, state, metrics={"eval/accuracy": value, "train/loss": 1.0})
    # A step without the metric (a preemption save between evals) does not displace the best.
    ckpt.save(6, state, metrics={"train/loss": 1.0})
    ckpt.wait()
    assert ckpt.all_steps() == [best, 5, 6]
    assert ckpt.best_step() == best
    ckpt.close()
    assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [best, 5, 6]


def test_non_finite_metric_never_becomes_best(tmp_path):
    state = _make_state()
    ckpt = Checkpointer(tmp_path, keep=1, best_metric="eval/loss", best_mode="min")
    ckpt.save(1, state, metrics={"eval/loss": 2.0})
    ckpt.save(2, state, metrics={"eval/loss": float("nan")})
    ckpt.save(3, state, metrics={"eval/loss": 3.0})
    ckpt.wait()
    assert ckpt.best_step() == 1
    assert ckpt.all_steps() == [1, 3]
    ckpt.close()


def test_without_best_metric_only_last_k_survive(tmp_path):
    state = _make_state()
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in range(1, 6):
        ckpt.save(step, state, metrics={"eval/accuracy": 1.0 / step})
    ckpt.close()
    assert Checkpointer(tmp_path).all_steps() == [4, 5]


def _data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]), ("data",))


def test_restore_from_8_devices_onto_1(tmp_path):
    assert jax.device_count() >= 8, "tests/conftest.py must force 8 host devices"
    mesh = _data_mesh()
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    host = {
        "w": np.arange(64.0, dtype=np.float32).reshape(16, 4),
        "b": np.arange(3, dtype=np.int32),
    }
    tree = {"w": jax.device_put(host["w"], sharded), "b": jax.device_put(host["b"], replicated)}
    assert len(tree["w"].sharding.device_set) == 8

    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(1, tree)
    restored, _, _ = ckpt.restore(_abstract(tree, _single_device))
    ckpt.close()

    for name, value in host.items():
        assert restored[name].sharding == SingleDeviceSharding(jax.devices()[0])
        np.testing.assert_array_equal(np.asarray(restored[name]), value)


def test_restore_from_1_device_onto_8(tmp_path):
    state = _make_state()
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(1, state)
    mesh = _data_mesh()

    def shard_first_axis(x):
        # Leading dims divisible by 8 are split over the data axis; the rest are replicated.
        spec = PartitionSpec("data") if x.ndim and x.shape[0] % 8 == 0 else PartitionSpec()
        return NamedSharding(mesh, spec)

    restored, _, _ = ckpt.restore(_abstract(state, shard_first_axis))
    ckpt.close()
    _assert_trees_equal(restored, state)
    kernel = restored.params["dense"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec("data")
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (1, 4)


def test_uncommitted_checkpoint_is_ignored_and_replaced(tmp_path):
    state = _make_state()
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(5, state)
    ckpt.close()
    # What a kill mid-save leaves on a local disk: the full contents, but never renamed into place.
    shutil.copytree(tmp_path / "5", tmp_path / "9.orbax-checkpoint-tmp-1700000000")

    resumed = Checkpointer(tmp_path, keep=3)
    assert resumed.latest_step() == 5
    assert resumed.all_steps() == [5]
    resumed.save(9, _make_state(seed=1))  # the stale temporary dir does not block the re-save
    resumed.wait()
    assert resumed.all_steps() == [5, 9]
    restored, _, _ = resumed.restore(_abstract(state, _single_device))
    _assert_trees_equal(restored, _make_state(seed=1))
    resumed.close()
    assert sorted(os.listdir(tmp_path)) == ["5", "9"]


# Orbax's background writer may leave an "Event loop is closed" behind after the failed save.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_async_save_error_surfaces_and_leaves_no_complete_checkpoint(tmp_path):
    state = _make_state()
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, state)
    ckpt.save(2, state, data_state={"not_json": object()})  # fails in the background writer
    with pytest.raises(TypeError, match="JSON serializable"):
        ckpt.save(3, state)
    assert ckpt.all_steps() == [1]
    assert Checkpointer(tmp_path).all_steps() == [1]

    ckpt.save(3, state)  # the manager stays usable after the error
    ckpt.save(4, state, data_state={"not_json": object()})
    with pytest.raises(TypeError, match="JSON serializable"):
        ckpt.wait()
    assert ckpt.all_steps() == [1, 3]
    ckpt.close()


def test_load_state_latest_and_best(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=1, best_metric="eval/accuracy")
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.7)]:
        ckpt.save(step, _make_state(seed=step), metrics={"eval/accuracy": acc})
    ckpt.close()
    abstract = _abstract(_make_state(), _single_device)

    _assert_trees_equal(load_state(tmp_path / "checkpoints", abstract), _make_state(seed=3))
    _assert_trees_equal(load_state(tmp_path / "checkpoints", abstract, "best"), _make_state(seed=2))
    _assert_trees_equal(load_state(tmp_path / "checkpoints", abstract, 2), _make_state(seed=2))
    with pytest.raises(ConfigError, match="one of \\[2, 3\\]"):
        load_state(tmp_path / "checkpoints", abstract, 1)
    # Reading must not change the other run's directory.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]


def test_load_state_errors_name_the_directory(tmp_path):
    abstract = _abstract(_make_state(), _single_device)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkdirError, match=str(empty)):
        load_state(empty, abstract)
    with pytest.raises(WorkdirError, match="does not exist"):
        load_state(tmp_path / "missing", abstract)

    ckpt = Checkpointer(tmp_path / "no_metric", keep=1)
    ckpt.save(1, _make_state())
    ckpt.close()
    with pytest.raises(ConfigError, match="no best metric"):
        load_state(tmp_path / "no_metric", abstract, "best")


def test_shape_mismatch_names_the_parameters(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(1, _make_state())
    wider = _make_state().replace(params={"head": {"kernel": jnp.ones((4, 3))}, "new": jnp.ones(2)})
    with pytest.raises(WorkdirError, match="params/head/kernel: checkpoint \\(4, 2\\) vs target"):
        ckpt.restore(_abstract(wider, _single_device))
    ckpt.close()
    with pytest.raises(ConfigError, match="params/new: missing from the checkpoint") as info:
        load_state(tmp_path, _abstract(wider, _single_device))
    assert "params/dense/bias: not in the target" in str(info.value)


def test_invalid_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="best_mode"):
        Checkpointer(tmp_path, best_mode="biggest")
    with pytest.raises(ConfigError, match="keep"):
        Checkpointer(tmp_path, keep=0)


def _with_random_bits(seed: int) -> _State:
    """`_make_state` plus 16 KiB of random bits: stored out of line in an OCDBT data file and
    incompressible, so zstd keeps it raw and zeroed bytes read back silently as other values."""
    bits = jax.random.bits(jax.random.PRNGKey(seed), (64, 64))
    return _make_state(seed).replace(extras={"ema": {"w": bits}})


def _array_files(directory: Path, step: int) -> list[Path]:
    """The OCDBT files of a step's state that hold the array bytes: `state/ocdbt.process_<i>/d/*`
    as each process wrote them, and `state/d/*` where orbax's merge copied them into the root
    database (which one is read varies). Arrays over 1 KiB are stored out of line as zstd-framed
    zarr chunks; small B-tree nodes without inlined values are left out by the size."""
    files = (directory / str(step) / "state").rglob("*")
    return [p for p in files if p.parent.name == "d" and p.stat().st_size > 4096]


def _zero_100_bytes(directory: Path, step: int) -> None:
    """Before CRCs, this restored without error, with other numbers in `extras/ema/w`."""
    for path in _array_files(directory, step):
        with path.open("r+b") as f:
            f.seek(path.stat().st_size // 2)
            f.write(bytes(100))


def _overwrite_with_random_bytes(directory: Path, step: int) -> None:
    """Before, a bare `Exception` from Orbax with a TensorStore spec dump."""
    for path in _array_files(directory, step):
        path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _save_steps(directory: Path, steps) -> Checkpointer:
    ckpt = Checkpointer(directory, keep=3)
    for step in steps:
        ckpt.save(step, _with_random_bits(step), data_state={"index": step})
    ckpt.wait()
    return ckpt


# What Orbax's abandoned reads raise after a failed one is filtered, never printed.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_zero_100_bytes, "values of extras/ema/w differ from those saved"),  # found by the CRCs
        (_overwrite_with_random_bytes, ""),  # TensorStore's words for the unreadable file
    ],
)
def test_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, capsys, damage, reason):
    ckpt = _save_steps(tmp_path, (1, 2, 3))
    damage(tmp_path, 3)
    abstract = _abstract(_with_random_bits(0), _single_device)
    damaged = f"step 3 in {re.escape(str(tmp_path))} is damaged \\(.*{re.escape(reason)}"
    with pytest.raises(CheckpointDamagedError, match=damaged):
        ckpt.restore(abstract, 3)
    with pytest.raises(WorkdirError, match="step 3 .* is damaged"):  # init_from checks too
        load_state(tmp_path, abstract)

    step, state, data_state, meta = ckpt.restore_latest_intact(abstract)
    assert (step, data_state, meta["step"]) == (2, {"index": 2}, 2)
    _assert_trees_equal(state, _with_random_bits(2))
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"warning: checkpoint step 3 in {tmp_path} is damaged (")
    assert err.endswith(f"moved it to {tmp_path / '3.damaged'}; resuming from step 2\n")
    # Moved aside, not deleted; out of the way of the run saving step 3 again.
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, _with_random_bits(4))
    ckpt.close()
    with Checkpointer(tmp_path) as reopened:
        assert reopened.all_steps() == [1, 2, 3]
        _assert_trees_equal(reopened.restore(abstract)[0], _with_random_bits(4))
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3", "3.damaged"]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_every_checkpoint_damaged_is_a_workdir_error_that_moves_nothing(tmp_path, capsys):
    ckpt = _save_steps(tmp_path, (1, 2))
    _zero_100_bytes(tmp_path, 1)
    _overwrite_with_random_bytes(tmp_path, 2)
    abstract = _abstract(_with_random_bits(0), _single_device)
    with pytest.raises(WorkdirError, match=f"no intact checkpoint in {re.escape(str(tmp_path))}:"):
        ckpt.restore_latest_intact(abstract)
    ckpt.close()
    assert capsys.readouterr().err == ""
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    empty = Checkpointer(tmp_path / "empty")
    with pytest.raises(WorkdirError, match="no complete checkpoint"):
        empty.restore_latest_intact(abstract)
    empty.close()


def test_checkpoint_without_crcs_still_restores(tmp_path):
    ckpt = _save_steps(tmp_path, (1,))
    ckpt.close()
    # What a checkpoint written before CRCs were recorded holds in its `meta` item.
    meta_file = tmp_path / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["state_crc32"]
    meta_file.write_text(json.dumps(meta))

    with Checkpointer(tmp_path) as old:
        step, state, data_state, _ = old.restore_latest_intact(
            _abstract(_with_random_bits(0), _single_device)
        )
    assert (step, data_state) == (1, {"index": 1})
    _assert_trees_equal(state, _with_random_bits(1))


def test_unreadable_metrics_file_is_a_workdir_error(tmp_path):
    ckpt = Checkpointer(tmp_path, best_metric="eval/accuracy")
    ckpt.save(1, _make_state(), metrics={"eval/accuracy": 0.5})
    ckpt.close()
    (tmp_path / "1" / "metrics" / "metrics").write_text("")  # orbax reads it to rank the steps
    with pytest.raises(WorkdirError, match=f"cannot read the checkpoints in {tmp_path}"):
        Checkpointer(tmp_path, best_metric="eval/accuracy")


def test_restoring_onto_another_dtype_is_not_damage(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _make_state())
        ckpt.wait()
        abstract = _abstract(_make_state(), _single_device)
        kernel = abstract.params["dense"]["kernel"]
        # Orbax casts to the target's dtype; the CRC of the saved float32 bytes cannot apply.
        cast = jax.ShapeDtypeStruct(kernel.shape, jnp.bfloat16, sharding=kernel.sharding)
        abstract.params["dense"]["kernel"] = cast
        restored, _, _ = ckpt.restore(abstract)
    want = _make_state().params["dense"]["kernel"].astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(restored.params["dense"]["kernel"]), want)
