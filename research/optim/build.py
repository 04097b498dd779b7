"""Config -> optax chain with per-parameter behaviour.

For each parameter the rule table (`param_rules`) gives a group, a learning-rate multiplier and
a weight-decay flag; layer-wise decay and progressive unfreezing multiply in. The chain, built
from optax's own transformations, is:

    gate (unfreeze) -> clip by value -> clip by global norm -> optimizer scaling
    -> decoupled weight decay (masked) -> learning-rate schedule -> per-parameter multipliers

Parameters whose multiplier is 0 for the whole run go through `optax.set_to_zero` in a
`multi_transform`, so they keep no optimizer state. Gradient accumulation wraps the chain in
`optax.MultiSteps`; all durations stay in train steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from research.errors import ConfigError
from research.optim import layer_decay, rules
from research.optim.schedules import build_schedule

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
FROZEN, TRAIN = "frozen", "train"


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax chain plus what the step and the logs need to know about it."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule  # learning rate as a function of the train step
    table: list[dict[str, Any]]  # path, shape, group, lr multiplier, decay: one row per parameter
    regularizer: Callable[[Any], jax.Array] | None  # L1/L2 penalty added to the loss, if any
    trainable: Callable[[jax.Array], dict[str, jax.Array]]  # path -> 1.0 if it trains at step


def build_optimizer(config: Any, params: Any) -> Optimizer:
    """The optimizer for a resolved config and a params tree (arrays or shape structs)."""
    opt = config.optimizer
    every_k = opt.accumulate_steps
    if every_k < 1:
        raise ConfigError(f"optimizer.accumulate_steps must be >= 1, got {every_k}")
    resolved = rules.resolve_rules(params, config.param_rules)
    paths = list(resolved)
    layer = layer_decay.layer_multipliers(paths, opt.layer_decay)
    static = {p: resolved[p].lr * layer[p] for p in paths}
    unfreeze = _unfreeze_schedule(config, {p: r.group for p, r in resolved.items()})
    groups = {p: r.group for p, r in resolved.items()}

    def trainable(step: jax.Array) -> dict[str, jax.Array]:
        gates = layer_decay.unfreeze_gates(groups, unfreeze, step)
        return {p: gates[p] * (static[p] > 0) for p in paths}

    schedule = build_schedule(opt, config.total_steps)
    # Inside MultiSteps the inner chain counts updates, not train steps.
    to_train_step = (lambda count: count * every_k) if every_k > 1 else (lambda count: count)
    inner = optax.chain(
        _gate(trainable, to_train_step),
        *_clipping(opt),
        _scaling(opt),
        _decoupled_decay(opt, resolved),
        optax.scale_by_learning_rate(lambda count: schedule(to_train_step(count))),
        _multipliers(static, groups, unfreeze, to_train_step),
    )
    labels = rules.tree_of(params, {p: FROZEN if static[p] == 0 else TRAIN for p in paths})
    tx = optax.multi_transform({TRAIN: inner, FROZEN: optax.set_to_zero()}, labels)
    if every_k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=every_k)
    return Optimizer(
        tx=tx,
        schedule=schedule,
        table=rules.table(params, resolved, static),
        regularizer=_regularizer(config.regularization, params, resolved),
        trainable=trainable,
    )


def _scaling(opt: Mapping[str, Any]) -> optax.GradientTransformation:
    """The optimizer proper, without its learning rate (optax's own building blocks)."""
    name = opt["name"]
    if name == "sgd":
        return optax.identity()
    if name in ("momentum", "nesterov"):
        return optax.trace(decay=opt["momentum"], nesterov=name == "nesterov")
    if name in ("adam", "adamw"):
        return optax.scale_by_adam(b1=opt["b1"], b2=opt["b2"], eps=opt["eps"])
    if name == "rmsprop":
        return optax.scale_by_rms(decay=opt["rms_decay"], eps=opt["eps"])
    if name == "adagrad":
        return optax.scale_by_rss(
            initial_accumulator_value=opt["initial_accumulator"], eps=opt["eps"]
        )
    if name == "adadelta":
        return optax.scale_by_adadelta(rho=opt["adadelta_rho"], eps=opt["eps"])
    raise ConfigError(f"unknown optimizer.name '{name}'; known: {', '.join(OPTIMIZERS)}")


def _clipping(opt: Mapping[str, Any]) -> list[optax.GradientTransformation]:
    parts = []
    if opt["grad_clip_value"] is not None:
        parts.append(optax.clip(opt["grad_clip_value"]))
    if opt["grad_clip_norm"] is not None:
        parts.append(optax.clip_by_global_norm(opt["grad_clip_norm"]))
    return parts


def _decoupled_decay(opt, resolved) -> optax.GradientTransformation:
    """Decoupled weight decay (AdamW style) on the parameters whose rule says `decay`."""
    if not opt["weight_decay"]:
        return optax.identity()
    decay = {p: r.decay for p, r in resolved.items()}
    return optax.add_decayed_weights(opt["weight_decay"], mask=lambda p: _by_path(p, decay))


def _regularizer(reg: Mapping[str, Any], params, resolved) -> Callable[[Any], jax.Array] | None:
    """l1 * sum|w| + l2/2 * sum w^2 over the parameters whose rule says `decay`."""
    l1, l2 = reg["l1"], reg["l2"]
    if not (l1 or l2):
        return None
    mask = rules.tree_of(params, {p: r.decay for p, r in resolved.items()})

    def penalty(p: Any) -> jax.Array:
        leaves = [w for w, m in zip(jax.tree.leaves(p), jax.tree.leaves(mask), strict=True) if m]
        total = jnp.zeros((), jnp.float32)
        if l1:
            total += l1 * sum(jnp.sum(jnp.abs(w)) for w in leaves)
        if l2:
            total += 0.5 * l2 * sum(jnp.sum(jnp.square(w)) for w in leaves)
        return total

    return penalty


def _unfreeze_schedule(config: Any, groups: Mapping[str, str]) -> tuple[tuple[int, str], ...]:
    """((start_step, group), ...) from `unfreeze.groups` and `unfreeze.at_steps`."""
    names, starts = tuple(config.unfreeze.groups), tuple(config.unfreeze.at_steps or ())
    if len(names) != len(starts):
        raise ConfigError(
            f"unfreeze.groups has {len(names)} entries but unfreeze.at_steps/at_epochs has "
            f"{len(starts)}; give one start per group"
        )
    unknown = sorted(set(names) - set(groups.values()))
    if unknown:
        raise ConfigError(
            f"unfreeze.groups names {', '.join(unknown)}, which no param_rules entry produces; "
            f"groups: {', '.join(sorted(set(groups.values())))}"
        )
    return tuple(zip(starts, names, strict=True))


def _counted(update_fn: Callable) -> optax.GradientTransformation:
    """A transformation whose update also sees its own update count (kept in its state, so it
    is checkpointed and a resumed run continues the same schedule)."""

    def init(params: Any) -> dict:
        del params
        return {"count": jnp.zeros((), jnp.int32)}

    def update(updates, state, params=None):
        del params
        return update_fn(updates, state["count"]), {"count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


def _gate(trainable, to_train_step) -> optax.GradientTransformation:
    """Zero the gradients of parameters not yet unfrozen, so they build no optimizer state."""
    return _counted(lambda updates, count: _scale_by_path(updates, trainable(to_train_step(count))))


def _multipliers(static, groups, unfreeze, to_train_step) -> optax.GradientTransformation:
    """Scale each update by its rule x layer-decay multiplier and its unfreeze gate."""

    def apply(updates, count):
        gates = layer_decay.unfreeze_gates(groups, unfreeze, to_train_step(count))
        return _scale_by_path(updates, {p: static[p] * gates[p] for p in static})

    return _counted(apply)


def _path(key_path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def _by_path(tree: Any, values: Mapping[str, Any]) -> Any:
    """`values[path]` at every leaf of `tree`. Inside `multi_transform` the frozen leaves are
    `MaskedNode`s, which have no leaves, so only the trained parameters are visited."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: values[_path(kp)], tree)


def _scale_by_path(updates: Any, factors: Mapping[str, Any]) -> Any:
    return jax.tree_util.tree_map_with_path(lambda kp, u: u * factors[_path(kp)], updates)
