"""Learning-rate schedules from config, as pure functions of the step (so they survive resume).

Every schedule returns the learning rate for an optimizer step; durations are read from the
resolved `*_steps` keys. `plateau` (reduce on plateau) is not a function of the step alone: it
starts from a constant rate and the loop scales it by the factor kept in the train state.
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from research.errors import ConfigError

SCHEDULES = (
    "constant",
    "step",
    "exponential",
    "cosine",
    "warmup_cosine",
    "linear",
    "cyclic",
    "plateau",
)


def build_schedule(opt: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """`optimizer.schedule` over `total_steps`, after an optional linear warmup."""
    name = opt["schedule"]
    if name not in SCHEDULES:
        raise ConfigError(f"unknown optimizer.schedule '{name}'; known: {', '.join(SCHEDULES)}")
    warmup = opt["warmup_steps"] or 0
    if warmup >= total_steps:
        raise ConfigError(
            f"optimizer.warmup_steps={warmup} must be below total_steps={total_steps}"
        )
    if name == "warmup_cosine":  # kept as one optax schedule: the most common choice
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else opt["learning_rate"],
            peak_value=opt["learning_rate"],
            warmup_steps=warmup,
            decay_steps=total_steps,
            end_value=opt["learning_rate"] * opt["end_lr_factor"],
        )
    main = _main_schedule(name, opt, total_steps - warmup)
    if not warmup:
        return main
    ramp = optax.linear_schedule(0.0, opt["learning_rate"], warmup)
    return optax.join_schedules([ramp, main], boundaries=[warmup])


def _main_schedule(name: str, opt: Mapping[str, Any], steps: int) -> optax.Schedule:
    """The schedule after warmup, over `steps` steps."""
    lr = opt["learning_rate"]
    if name in ("constant", "plateau"):
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, steps, alpha=opt["end_lr_factor"])
    if name == "linear":
        return optax.linear_schedule(lr, lr * opt["end_lr_factor"], steps)
    if name == "cyclic":
        return _triangular(lr, lr * opt["end_lr_factor"], _required(opt, "cycle_steps"))
    every = _required(opt, "decay_every_steps")
    hold = opt["hold_steps"] or 0
    decay = optax.exponential_decay(
        lr, transition_steps=every, decay_rate=opt["decay_rate"], staircase=name == "step"
    )
    return optax.join_schedules([optax.constant_schedule(lr), decay], [hold]) if hold else decay


def _triangular(high: float, low: float, half_cycle: int) -> optax.Schedule:
    """Cyclic learning rate (triangular policy): low -> high -> low every 2 * half_cycle steps."""

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        phase = jnp.abs(jnp.mod(step / half_cycle, 2.0) - 1.0)  # 1 at the ends, 0 mid-cycle
        return low + (high - low) * (1.0 - phase)

    return schedule


def _required(opt: Mapping[str, Any], key: str) -> int:
    value = opt[key]
    if not value:
        epochs_key = key.replace("_steps", "_epochs")
        raise ConfigError(
            f"optimizer.schedule='{opt['schedule']}' needs optimizer.{key} "
            f"(or optimizer.{epochs_key}) > 0"
        )
    return value
