"""Optimisation: config -> optax chain with per-parameter rules, layer decay and unfreezing."""

from research.optim.build import Optimizer, build_optimizer
from research.optim.schedules import build_schedule

__all__ = ["Optimizer", "build_optimizer", "build_schedule"]
