"""configs/fundamentals/xor.py: the course's 2-2-1 tanh/sigmoid network learns XOR with plain SGD.

End to end through `train_and_evaluate` (seed 0), and the config's own model, task and SGD trained
for many seeds at once (vmap over seeds, full batch) to back its docstring: which seeds reach
train/loss < 0.01 in the configured steps, and where the others stall.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as cfg
from research.errors import ConfigError
from research.models import get_model
from research.tasks import get_task
from research.train.loop import train_and_evaluate
from research.train.state import make_init_fn

CONFIG = "configs/fundamentals/xor.py"
TARGET_LOSS = 0.01
# The four points, in any order: full-batch steps do not depend on it (up to float rounding).
XOR_BATCH = {
    "image": jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32),
    "label": jnp.array([0, 1, 1, 0], jnp.int32),
}


def _config(tmp_path, arg: str | None = None):
    config = cfg.load_config_file(CONFIG, arg)
    cfg.apply_overrides(
        config,
        {
            "data.data_dir": str(tmp_path / "tfds"),
            "parallel.num_devices": 1,  # batch_size 4 does not divide the 8 test devices
            "tracking.progress": False,
            "tracking.wandb_mode": "disabled",
        },
    )
    return config


def _final_losses(config, seeds: list[int]) -> np.ndarray:
    """The train/loss the loop logs at the last step, for each seed, without the loop.

    Same model, task and init (`make_init_fn` on PRNGKey(seed)) as a run; each step is one
    SGD update on all four points. The logged loss is the one computed before the last update.
    """
    opt = config.optimizer
    assert (opt.name, opt.schedule, opt.grad_clip_norm) == ("sgd", "constant", None)
    tx = optax.sgd(opt.learning_rate)
    task = get_task(config.task, num_classes=2)
    model = get_model(config.model, num_classes=task.model_outputs)
    init = make_init_fn(model, tx, XOR_BATCH["image"][:1])

    def batch_loss(params):
        logits, aux = model.apply({"params": params}, XOR_BATCH["image"], train=True)
        return task.loss(logits, aux, XOR_BATCH)[0]

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(batch_loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def final_loss(seed):
        state = init(jax.random.PRNGKey(seed))
        carry = (state.params, state.opt_state)
        _, losses = jax.lax.scan(step, carry, None, length=config.total_steps)
        return losses[-1]

    return np.asarray(jax.jit(jax.vmap(final_loss))(jnp.asarray(seeds)))


@pytest.mark.slow
def test_xor_config_learns_the_truth_table(tmp_path):
    config = _config(tmp_path)
    summary = train_and_evaluate(config, tmp_path / "run").summary
    assert summary["train/loss"] < TARGET_LOSS
    assert summary["test/accuracy"] == 1.0 and summary["test/f1"] == 1.0
    assert summary["test/confusion_matrix"] == [[2, 0], [0, 2]]
    # The loop trains exactly the reference full-batch SGD (up to summation order).
    assert summary["train/loss"] == pytest.approx(_final_losses(config, [0])[0], rel=1e-2)


def test_xor_2_2_1_converges_for_seeds_0_to_6_and_seed_7_stalls(tmp_path):
    losses = _final_losses(_config(tmp_path), list(range(8)))
    assert np.all(losses[:7] < TARGET_LOSS), losses
    # Seed 7 ends on the known 2-2-1 XOR plateau: two points right, two at p = 1/2.
    assert losses[7] == pytest.approx(math.log(2) / 2, abs=1e-2)


def test_xor_2_3_1_converges_for_every_seed_tried(tmp_path):
    losses = _final_losses(_config(tmp_path, "3"), list(range(16)))
    assert np.all(losses < TARGET_LOSS), losses


@pytest.mark.parametrize("arg", ["0", "two", "-1"])
def test_xor_config_argument_is_a_hidden_width(arg):
    with pytest.raises(ConfigError, match="hidden width"):
        cfg.load_config_file(CONFIG, arg)
