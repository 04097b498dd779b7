"""Pure train and eval steps built from (model, task, optimizer): no I/O, no Python side effects.

`axis_name` is set only under `jax.pmap`, where each device sees its own shard and gradients,
metrics and eval sums are averaged or summed across devices explicitly. Under `jax.jit` with
NamedSharding the step sees the global batch and XLA inserts the collectives.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.optim import Optimizer
from research.tasks import Task
from research.train.state import TrainState, eval_params, model_variables
from research.train.step_parts import Batch, Metrics, StepKeys, StepPart, default_parts

# The eval key: fold_in(state.rng, EVAL_STREAM), fixed across evaluations so that stochastic
# eval metrics (sampled latents, corrupted inputs) are deterministic. No train step reaches it.
EVAL_STREAM = 2**32 - 1


def make_train_step(
    model: nn.Module,
    task: Task,
    optimizer: Optimizer,
    parts: Sequence[StepPart] | None = None,
    *,
    axis_name: str | None = None,
    inference_mode: bool = False,
    batch_norm_inference: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`(state, batch) -> (state, metrics)`; metrics are `train/*` scalars on device.

    The step is the textbook one; `parts` (research/train/step_parts.py, default: the task's
    loss, the optimizer's penalty, frozen parts' BatchNorm statistics kept) add the rest: loss
    terms, batch rewriting, update transforms, extras they keep, metrics. `inference_mode` runs
    the model with `train=False` (a linear probe: no dropout, running statistics);
    `batch_norm_inference` normalises every BatchNorm with its running statistics and leaves
    them unchanged (a fine-tuned source model's statistics are kept).
    """
    parts = default_parts(task, optimizer) if parts is None else tuple(parts)
    forward = functools.partial(
        _forward, model, task, inference_mode=inference_mode, bn_inference=batch_norm_inference
    )

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        keys = step_keys(state, axis_name)
        for part in parts:
            batch = part.prepare(batch, keys, state)
        kwargs = {k: v for part in parts for k, v in part.model_kwargs(state, batch).items()}

        def objective(params: Any) -> tuple[jax.Array, tuple[Metrics, dict, dict]]:
            outputs, aux, mutated = forward(state, params, batch, keys, kwargs)
            terms = [part.loss(state, params, batch, outputs, aux) for part in parts]
            terms = [term for term in terms if term is not None]
            loss = functools.reduce(lambda total, term: total + term, [v for v, _ in terms])
            return loss, ({k: v for _, m in terms for k, v in m.items()}, mutated, aux)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (_, (metrics, mutated, aux)), grads = grad_fn(state.params)
        if axis_name is not None:  # each device saw its own shard
            grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
        updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
        for part in parts:
            updates = part.transform_updates(state, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=mutated.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        for part in parts:
            new_state = part.after_update(state, new_state, aux)
        metrics = {**metrics, **_norms_and_rate(optimizer, state, new_state, grads)}
        for part in parts:
            metrics = part.metrics(state, grads, updates, aux, metrics)
        return new_state, {f"train/{k}": v for k, v in metrics.items()}

    return train_step


def step_keys(state: TrainState, axis_name: str | None) -> StepKeys:
    """The step's keys: `fold_in(state.rng, step)`, folded with the device index under pmap
    (independent dropout masks per device shard)."""
    step_key = jax.random.fold_in(state.rng, state.step)
    if axis_name is None:
        return StepKeys(step_key, step_key)
    return StepKeys(step_key, jax.random.fold_in(step_key, jax.lax.axis_index(axis_name)))


def _forward(
    model: nn.Module,
    task: Task,
    state: TrainState,
    params: Any,
    batch: Batch,
    keys: StepKeys,
    kwargs: dict,
    *,
    inference_mode: bool,
    bn_inference: bool,
) -> tuple[Any, dict, dict]:
    """(outputs, aux, updated collections) of the model in training."""
    with nn.intercept_methods(_bn_inference if bn_inference else _as_is):
        (outputs, aux), mutated = model.apply(
            model_variables(state, params),
            task.inputs(batch),
            train=not inference_mode,
            rngs={"dropout": keys.dropout, "sample": keys.sample},
            mutable=["batch_stats"],
            **kwargs,
        )
    return as_float32(outputs), as_float32(aux), mutated


def as_float32(tree: Any) -> Any:
    """Floating arrays in float32: a model computing in bfloat16 (`model.dtype`) hands the
    task its outputs in float32, so losses, softmax and metrics are computed at full precision
    (a no-op for a float32 model)."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_floating_array(x) else x, tree)


def _is_floating_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)


def _norms_and_rate(
    optimizer: Optimizer, state: TrainState, new_state: TrainState, grads: Any
) -> Metrics:
    """Every step's own metrics: gradient and parameter norms, the base learning rate."""
    rate = optimizer.schedule(optimizer.update_step(state.step))
    return {
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_state.params),
        "learning_rate": jnp.asarray(rate, jnp.float32),
    }


def _bn_inference(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    """Method interceptor: BatchNorm calls use the running statistics (train mode elsewhere)."""
    m = context.module
    if not (isinstance(m, nn.BatchNorm) and context.method_name == "__call__"):
        return next_fun(*args, **kwargs)
    # The layer fixes use_running_average at construction, so normalise here as flax does in
    # inference mode (features on the last axis, as every model here has them).
    x = args[0]
    mul = jax.lax.rsqrt(m.get_variable("batch_stats", "var") + m.epsilon)
    if m.use_scale:
        mul = mul * m.get_variable("params", "scale")
    y = (x - m.get_variable("batch_stats", "mean")) * mul
    if m.use_bias:
        y = y + m.get_variable("params", "bias")
    return y.astype(m.dtype or x.dtype)


def _as_is(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    del context
    return next_fun(*args, **kwargs)


def make_eval_step(
    model: nn.Module, task: Task, *, axis_name: str | None = None
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """`(state, batch) -> sums`: the task's masked statistics for one (padded) batch.

    The model gets a "sample" key fixed for the run (from `state.rng`, folded with the device
    index under pmap), so evaluating the same state twice gives the same sums. The task runs
    the model (`task.eval_outputs`; e.g. several posterior samples per example).
    """

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        variables = model_variables(state, eval_params(state))
        rng = jax.random.fold_in(state.rng, EVAL_STREAM)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        apply = functools.partial(model.apply, variables)
        outputs, aux = as_float32(task.eval_outputs(apply, batch, rng))
        sums = task.eval_sums(outputs, aux, batch)
        return jax.lax.psum(sums, axis_name) if axis_name is not None else sums

    return eval_step
