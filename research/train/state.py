"""The TrainState pytree: everything a run needs to continue, and nothing else."""

from collections.abc import Callable
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
    *,
    ema: bool = False,
    lr_scale: bool = False,
    teacher_variables: Any = None,
    carry: Any = None,
) -> Callable[[jax.Array], TrainState]:
    """A pure `rng -> TrainState` for `jax.eval_shape` (shapes first) and a sharded `jax.jit`.

    `ema` keeps an exponential moving average of the parameters in `extras["ema"]`; `lr_scale`
    keeps the factor that reduce-on-plateau applies to every update in `extras["lr_scale"]`.
    `teacher_variables` (shapes) reserve `extras["teacher"]`, filled from the teacher's run.
    `carry` (a recurrent model's zero state for the global batch) starts `extras["carry"]`, the
    state truncated BPTT passes from one batch of stream windows to the next.
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
            extras=_extras(params, ema, lr_scale, teacher_variables, carry),
        )

    return init


def model_variables(state: TrainState, params: Any | None = None) -> dict:
    """The variables dict for `model.apply` (params, plus batch_stats when the model has any)."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def _extras(params: Any, ema: bool, lr_scale: bool, teacher: Any, carry: Any) -> dict:
    extras = {}
    if carry is not None:
        extras["carry"] = jax.tree.map(jnp.zeros_like, carry)
    if teacher is not None:
        extras["teacher"] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), teacher)
    if ema:
        extras["ema"] = jax.tree.map(jnp.copy, params)
    if lr_scale:
        extras["lr_scale"] = jnp.ones((), jnp.float32)
    return extras


def eval_params(state: TrainState) -> Any:
    """The parameters evaluation uses: the moving average when one is kept."""
    return state.extras.get("ema", state.params)
