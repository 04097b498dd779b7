"""Pure train and eval steps built from (model, task, optimizer): no I/O, no Python side effects.

`axis_name` is set only under `jax.pmap`, where each device sees its own shard and gradients,
metrics and eval sums are averaged or summed across devices explicitly. Under `jax.jit` with
NamedSharding the step sees the global batch and XLA inserts the collectives.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.optim import Optimizer
from research.optim.diagnostics import dead_units, gradient_diagnostics
from research.optim.layer_decay import keep_frozen_statistics
from research.tasks import Task
from research.train.state import TrainState, eval_params, model_variables
from research.train.teacher import Teacher

Batch = dict[str, jax.Array]

# Sub-streams of a step's (per-device) key. Dropout keeps the key itself, so adding streams
# leaves every earlier run's dropout masks bit-identical.
SAMPLE_STREAM, PREPARE_STREAM = 1, 2
# The eval key: fold_in(state.rng, EVAL_STREAM), fixed across evaluations so that stochastic
# eval metrics (sampled latents, corrupted inputs) are deterministic. No train step reaches it.
EVAL_STREAM = 2**32 - 1


def make_train_step(
    model: nn.Module,
    task: Task,
    optimizer: Optimizer,
    *,
    axis_name: str | None = None,
    freeze_frozen_batch_norm: bool = True,
    batch_norm_inference: bool = False,
    inference_mode: bool = False,
    diagnostics: bool = False,
    ema_decay: float | None = None,
    batch_mixer: Callable[[jax.Array, Batch], Batch] | None = None,
    teacher: Teacher | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`; metrics are `train/*` scalars on device.

    The objective is the task loss plus the optimizer's L1/L2 penalty (reported apart, as
    `train/penalty`). With `freeze_frozen_batch_norm`, BatchNorm statistics of modules whose
    parameters do not train at this step keep their values; with `batch_norm_inference`
    every BatchNorm normalises with its running statistics and leaves them unchanged (a
    fine-tuned source model's statistics are kept); `inference_mode` runs the whole model with
    `train=False` (a linear probe: no dropout, running statistics). `diagnostics` adds per-module
    gradient norms, per-group update ratios and dead-ReLU fractions (research.optim.diagnostics).
    `ema_decay` updates the parameter average in `extras["ema"]`; an `extras["lr_scale"]`
    (reduce-on-plateau) multiplies every update. `batch_mixer` (mixup/CutMix) rewrites the
    batch from the step's key before the model sees it, the same on any number of devices.
    With a `teacher` the objective is its distillation loss (the task's metrics are still
    reported; `train/distill_kl` and `train/ce` are the two parts).

    Randomness: the step's key `fold_in(state.rng, step)` (folded with the device index under
    pmap) is the model's "dropout" stream; `fold_in(key, SAMPLE_STREAM)` is its "sample" stream
    (e.g. a VAE's reparameterisation noise) and `fold_in(key, PREPARE_STREAM)` is what
    `task.prepare` draws from (e.g. input corruption).
    """
    tx, regularizer = optimizer.tx, optimizer.regularizer

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        rng = step_rng
        if axis_name is not None:  # independent dropout masks per device shard
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        batch = task.prepare(batch, state.step, jax.random.fold_in(rng, PREPARE_STREAM))
        if batch_mixer is not None:  # the undivided key: jit and pmap mix alike
            batch = batch_mixer(step_rng, batch)
        rngs = {"dropout": rng, "sample": jax.random.fold_in(rng, SAMPLE_STREAM)}
        kwargs = model_kwargs(task, batch)
        if "carry" in state.extras:  # truncated BPTT: continue each stream from its last state
            kwargs["initial_carry"] = _reset_streams(state.extras["carry"], batch.get("reset"))

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[dict, dict]]:
            with nn.intercept_methods(_bn_inference if batch_norm_inference else _as_is):
                (outputs, aux), mutated = model.apply(
                    model_variables(state, params),
                    task.inputs(batch),
                    train=not inference_mode,
                    rngs=rngs,
                    mutable=["batch_stats"],
                    **kwargs,
                )
            loss, metrics = task.loss(outputs, aux, batch)
            if teacher is not None:
                loss, parts = teacher.loss(outputs, teacher_logits, batch)
                metrics = {**metrics, **parts}
            if regularizer is not None:
                metrics = {**metrics, "penalty": regularizer(params)}
                loss = loss + metrics["penalty"]
            return loss, (metrics, mutated, aux)

        if teacher is not None:
            teacher_logits = teacher.logits(state.extras["teacher"], task.inputs(batch))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (metrics, mutated, aux)), grads = grad_fn(state.params)
        if axis_name is not None:
            grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if "lr_scale" in state.extras:
            updates = jax.tree.map(lambda u: u * state.extras["lr_scale"], updates)
        if diagnostics:
            metrics = {
                **metrics,
                **gradient_diagnostics(grads, updates, state.params, optimizer.table),
                **dead_units(aux, axis_name),
            }
        batch_stats = mutated.get("batch_stats", state.batch_stats)
        if freeze_frozen_batch_norm and state.batch_stats:
            trainable = optimizer.trainable(optimizer.update_step(state.step))
            batch_stats = keep_frozen_statistics(state.batch_stats, batch_stats, trainable)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            extras=_carried(_updated_ema(state.extras, params, ema_decay), aux),
        )
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(new_state.params),
            "learning_rate": _learning_rate(optimizer, state),
        }
        return new_state, {f"train/{k}": v for k, v in metrics.items()}

    return train_step


def model_kwargs(task: Task, batch: Batch) -> dict[str, Any]:
    """Keyword arguments the task passes to the model besides its input (e.g. seq_lengths)."""
    method = getattr(task, "model_kwargs", None)
    return dict(method(batch)) if method is not None else {}


def _reset_streams(carry: Any, reset: jax.Array | None) -> Any:
    """Zero the carried state of the streams that start over in this batch (`reset` == 1)."""
    if reset is None:
        return carry
    keep = 1.0 - reset.astype(jnp.float32)
    return jax.tree.map(lambda c: c * keep.reshape((-1,) + (1,) * (c.ndim - 1)), carry)


def _carried(extras: dict, aux: dict) -> dict:
    """Truncated BPTT: the final states become the next batch's start, with no gradient path
    back into this batch (the carry is a constant to the next step's differentiation)."""
    if "carry" not in extras:
        return extras
    return {**extras, "carry": jax.lax.stop_gradient(aux["carry"])}


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


def _learning_rate(optimizer: Optimizer, state: TrainState) -> jax.Array:
    """The base learning rate of this step, times the reduce-on-plateau scale if any."""
    lr = jnp.asarray(optimizer.schedule(optimizer.update_step(state.step)), jnp.float32)
    return lr * state.extras["lr_scale"] if "lr_scale" in state.extras else lr


def _updated_ema(extras: dict, params: Any, decay: float | None) -> dict:
    if decay is None:
        return extras
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, extras["ema"], params)
    return {**extras, "ema": ema}


def make_eval_step(
    model: nn.Module, task: Task, *, axis_name: str | None = None
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """`(state, batch) -> sums`: the task's masked statistics for one (padded) batch.

    The model gets a "sample" key fixed for the run (from `state.rng`, folded with the device
    index under pmap), so evaluating the same state twice gives the same sums. A task with an
    `eval_outputs(apply, batch, rng)` method runs the model itself (e.g. several posterior
    samples per example); `apply` is `model.apply` with the evaluated variables bound.
    """

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        variables = model_variables(state, eval_params(state))
        rng = jax.random.fold_in(state.rng, EVAL_STREAM)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        eval_outputs = getattr(task, "eval_outputs", None)
        if eval_outputs is not None:
            outputs, aux = eval_outputs(functools.partial(model.apply, variables), batch, rng)
        else:
            inputs = task.inputs(batch)
            kwargs = model_kwargs(task, batch)
            outputs, aux = model.apply(
                variables, inputs, train=False, rngs={"sample": rng}, **kwargs
            )
        sums = task.eval_sums(outputs, aux, batch)
        return jax.lax.psum(sums, axis_name) if axis_name is not None else sums

    return eval_step
