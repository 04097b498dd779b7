"""bfloat16 mixed precision (`model.dtype=bfloat16`): convolutions and matmuls compute in
bfloat16, parameters and optimizer state stay float32, losses are computed in float32, and
training follows the float32 run for a CNN, a VAE and an LSTM."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.config import load_config_file
from research.train.setup import build_run

ROOT = Path(__file__).parents[1]
STEPS = 30
# (config, overrides, relative tolerance on every step's training loss vs float32). The two
# runs part ways like two seeds do (bfloat16 keeps 8 bits of mantissa), so the CNN, whose
# dropout and small batches make single steps noisy, gets more room per step; the mean loss of
# the last 10 steps must agree within 3% for all three.
FAMILIES = {
    "cnn": ("quickstart.py", {"batch_size": 32}, 0.1),
    "vae": ("generative/vae_digits.py", {"batch_size": 32}, 0.03),
    "lstm": (
        "sequence/adding.py",
        {"batch_size": 16, "data.name": "adding/t50", "model.hidden_sizes": (32,)},
        0.03,
    ),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _run(family: str, dtype: str, data_dir: str):
    name, overrides, _ = FAMILIES[family]
    c = load_config_file(ROOT / "configs" / name, None)
    c.data.data_dir, c.total_epochs, c.total_steps = data_dir, None, STEPS
    c.model.dtype, c.optimizer.warmup_steps = dtype, 5
    c.tracking.wandb_mode = "disabled"
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (c[section] if section else c)[leaf] = value
    return build_run(c)


def _batch(run, index: int = 0) -> dict:
    """Training batch `index`, read in order (the same for both precisions)."""
    source, size = run.sources["train"], run.config.batch_size
    records = [run.transform(source[(index * size + j) % len(source)]) for j in range(size)]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _train(run) -> tuple[list[float], object]:
    state = run.par.to_device(run.par.init_state(run.init_fn, jax.random.PRNGKey(0)))
    losses = []
    for i in range(STEPS):
        state, metrics = run.train_step(state, run.par.put_batch(_batch(run, i)))
        losses.append(float(run.par.to_host(metrics)["train/loss"]))
    return losses, state


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_trains_like_float32_with_float32_state(family, data_dir):
    tolerance = FAMILIES[family][2]
    full, full_state = _train(_run(family, "float32", data_dir))
    half, half_state = _train(_run(family, "bfloat16", data_dir))
    assert full[-1] < full[0]  # training happened, so agreement is not vacuous
    np.testing.assert_allclose(half, full, rtol=tolerance)
    np.testing.assert_allclose(np.mean(half[-10:]), np.mean(full[-10:]), rtol=0.03)
    assert half != full  # bfloat16 really computed something else
    for leaf in jax.tree.leaves((half_state.params, half_state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert {leaf.dtype for leaf in jax.tree.leaves(full_state.params)} == {jnp.dtype("float32")}


def _contractions(hlo: str) -> list[str]:
    """The result types of every dot and convolution in a StableHLO module."""
    ops = re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*", hlo)
    return [op.rsplit("->", 1)[-1] for op in ops]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_matmul_and_convolution_of_the_bfloat16_step_is_bfloat16(family, data_dir):
    run = _run(family, "bfloat16", data_dir)
    state = run.par.abstract_state(run.init_fn, jax.random.PRNGKey(0))
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, jnp.asarray(x).dtype, sharding=run.par.batch_sharding
        ),
        _batch(run),
    )
    hlo = run.train_step.lower(state, batch).as_text()
    results = _contractions(hlo)
    assert results, "no dot or convolution found"
    wide = [r for r in results if "f32" in r]
    assert not wide, f"{len(wide)} of {len(results)} contractions compute in float32: {wide[:3]}"
