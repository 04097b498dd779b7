"""Config -> optax chain with per-parameter behaviour.

For each parameter the rule table (`param_rules`) gives a group, a learning-rate multiplier and
a weight-decay flag; layer-wise decay multiplies in, and progressive unfreezing says from which
step a group trains. The chain, built from optax's own transformations, is:

    [EWC penalty gradient, in continual runs] -> gate (zero the gradients of parameters not
    training yet) -> clip by value -> clip by
    global norm -> [optimizer scaling -> decoupled weight decay (masked)], one copy per
    unfreeze start -> learning-rate schedule -> per-parameter multipliers

Parameters whose multiplier is 0 for the whole run go through `optax.set_to_zero` in a
`multi_transform`, so they keep no optimizer state (nor gradient-accumulation buffers). A
group that unfreezes at step s has its own optimizer state, untouched until s, so e.g. Adam's
bias correction starts afresh. Gradient accumulation wraps the trained part in
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
from research.optim import ewc, layer_decay, rules
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
    every_k: int = 1  # gradient accumulation: parameters change every k train steps

    def update_step(self, step: jax.Array) -> jax.Array:
        """The train step the optimizer's schedules see at `step` (rounded down to an update)."""
        return (step // self.every_k) * self.every_k if self.every_k > 1 else step


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
    # Inside MultiSteps the chain counts updates, not train steps.
    to_train_step = (lambda count: count * every_k) if every_k > 1 else (lambda count: count)
    train = optax.chain(
        *([ewc.ewc_regularizer(config.ewc.weight)] if config.ewc.weight else []),
        _gate(trainable, to_train_step),  # frozen-for-now gradients are zero, even for clipping
        *_clipping(opt),
        _per_start(opt, resolved, static, unfreeze, to_train_step),
        optax.scale_by_learning_rate(lambda count: schedule(to_train_step(count))),
        _multipliers(static),
    )
    if every_k > 1:
        train = optax.MultiSteps(train, every_k_schedule=every_k).gradient_transformation()
    labels = rules.tree_of(params, {p: FROZEN if static[p] == 0 else TRAIN for p in paths})
    tx = optax.multi_transform({TRAIN: train, FROZEN: optax.set_to_zero()}, labels)
    return Optimizer(
        tx=tx,
        schedule=schedule,
        table=rules.table(params, resolved, static),
        regularizer=_regularizer(config.regularization, params, resolved, static),
        trainable=trainable,
        every_k=every_k,
    )


def _per_start(opt, resolved, static, unfreeze, to_train_step) -> optax.GradientTransformation:
    """The optimizer (and decoupled decay), one copy per unfreeze start.

    A group that starts training at step s gets its own optimizer state, which stays at its
    initial value until s: Adam's bias correction then starts afresh, as for a new optimizer,
    instead of inheriting the step count of groups that trained all along.
    """
    start_of = dict.fromkeys(resolved, 0)
    for start, group in unfreeze:
        start_of.update({p: start for p, r in resolved.items() if r.group == group})
    label = {p: f"{TRAIN}@{start_of[p]}" for p in resolved if static[p] > 0}

    def branch(start: int) -> optax.GradientTransformation:
        core = optax.chain(_scaling(opt), _decoupled_decay(opt, resolved))
        return _delayed(core, start, to_train_step) if start else core

    branches = {name: branch(int(name.split("@")[1])) for name in set(label.values())}
    return optax.multi_transform(branches, lambda p: _by_path(p, label))


def _delayed(inner, start: int, to_train_step) -> optax.GradientTransformation:
    """`inner`, but passing zeros and keeping its state unchanged before train step `start`."""

    def init(params: Any) -> dict:
        return {"count": jnp.zeros((), jnp.int32), "inner": inner.init(params)}

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state["inner"], params)

        def wait(_):
            return jax.tree.map(jnp.zeros_like, updates), state["inner"]

        started = to_train_step(state["count"]) >= start
        new_updates, inner_state = jax.lax.cond(started, run, wait, None)
        return new_updates, {"count": state["count"] + 1, "inner": inner_state}

    return optax.GradientTransformation(init, update)


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


def _regularizer(
    reg: Mapping[str, Any], params, resolved, static
) -> Callable[[Any], jax.Array] | None:
    """l1 * sum|w| + l2/2 * sum w^2 over the trained parameters whose rule says `decay`."""
    l1, l2 = reg["l1"], reg["l2"]
    if not (l1 or l2):
        return None
    mask = rules.tree_of(params, {p: r.decay and static[p] > 0 for p, r in resolved.items()})

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
    if len(set(names)) != len(names):
        raise ConfigError(f"unfreeze.groups {names} names a group more than once")
    if any(not 0 <= s < config.total_steps for s in starts):
        raise ConfigError(
            f"unfreeze.at_steps {starts}: every start must be in [0, {config.total_steps}) "
            "(total_steps)"
        )
    if list(starts) != sorted(starts):
        raise ConfigError(f"unfreeze.at_steps {starts} must be non-decreasing (groups in order)")
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


def _multipliers(static: Mapping[str, float]) -> optax.GradientTransformation:
    """Scale each update by its rule x layer-decay multiplier."""
    return optax.stateless(lambda updates, params=None: _scale_by_path(updates, static))


def _by_path(tree: Any, values: Mapping[str, Any]) -> Any:
    """`values[path]` at every leaf of `tree`. Inside `multi_transform` the frozen leaves are
    `MaskedNode`s, which have no leaves, so only the trained parameters are visited."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: values[rules.key_path_str(kp)], tree)


def _scale_by_path(updates: Any, factors: Mapping[str, Any]) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda kp, u: u * factors[rules.key_path_str(kp)], updates
    )
