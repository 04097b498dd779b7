"""Learning-rate schedules from config, as pure functions of the step (so they survive resume)."""

from collections.abc import Mapping
from typing import Any

import optax

from research.errors import ConfigError

SCHEDULES = ("constant", "warmup_cosine")


def build_schedule(opt: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """`optimizer.schedule` over `total_steps`: constant, or linear warmup then cosine decay."""
    peak = opt["learning_rate"]
    name = opt["schedule"]
    if name == "constant":
        return optax.constant_schedule(peak)
    if name == "warmup_cosine":
        warmup = opt["warmup_steps"] or 0
        if warmup >= total_steps:
            raise ConfigError(
                f"optimizer.warmup_steps={warmup} must be below total_steps={total_steps}"
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else peak,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=total_steps,
            end_value=peak * opt["end_lr_factor"],
        )
    raise ConfigError(f"unknown optimizer.schedule '{name}'; known: {', '.join(SCHEDULES)}")
