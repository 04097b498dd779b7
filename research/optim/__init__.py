"""Optimisation: config -> optax chain, schedules (and, later, per-parameter rules)."""

from research.optim.build import build_optimizer
from research.optim.schedules import build_schedule

__all__ = ["build_optimizer", "build_schedule"]
