"""Config -> optax chain: optional global-norm clipping, then the optimizer with its schedule."""

from collections.abc import Mapping
from typing import Any

import optax

from research.errors import ConfigError
from research.optim.schedules import build_schedule

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def _optimizer(opt: Mapping[str, Any], lr: optax.Schedule) -> optax.GradientTransformation:
    name = opt["name"]
    if name == "sgd":
        return optax.sgd(lr)
    if name in ("momentum", "nesterov"):
        return optax.sgd(lr, momentum=opt["momentum"], nesterov=name == "nesterov")
    if name == "adam":
        return optax.adam(lr, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"])
    if name == "adamw":
        return optax.adamw(
            lr, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"], weight_decay=opt["weight_decay"]
        )
    raise ConfigError(f"unknown optimizer.name '{name}'; known: {', '.join(OPTIMIZERS)}")


def build_optimizer(
    opt: Mapping[str, Any], total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain described by `config.optimizer`, and its learning-rate schedule."""
    schedule = build_schedule(opt, total_steps)
    parts = []
    if opt["grad_clip_norm"] is not None:
        parts.append(optax.clip_by_global_norm(opt["grad_clip_norm"]))
    parts.append(_optimizer(opt, schedule))
    return optax.chain(*parts), schedule
