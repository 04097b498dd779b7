"""The TrainState pytree: everything a run needs to continue, and nothing else."""

from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step, params, BatchNorm statistics, optimizer state, base rng and task extras."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    extras: Any


def make_init_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    sample_input: jax.Array,
    parts: Sequence[Any] = (),
) -> Callable[[jax.Array], TrainState]:
    """A pure `rng -> TrainState` for `jax.eval_shape` (shapes first) and a sharded `jax.jit`.

    `parts` are the train step's parts (research/train/step_parts.py); each adds the `extras`
    entries it keeps (a moving average, a plateau scale, a teacher's variables, a recurrent
    carry).
    """

    def init(rng: jax.Array) -> TrainState:
        params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
        variables = model.init(
            {"params": params_rng, "dropout": dropout_rng}, sample_input, train=False
        )
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=state_rng,
            extras={k: v for part in parts for k, v in part.init_extras(params).items()},
        )

    return init


def model_variables(state: TrainState, params: Any | None = None) -> dict:
    """The variables dict for `model.apply` (params, plus batch_stats when the model has any)."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def eval_params(state: TrainState) -> Any:
    """The parameters evaluation uses: the moving average when one is kept."""
    return state.extras.get("ema", state.params)
