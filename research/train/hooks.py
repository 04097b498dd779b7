"""Periodic actions around the train step: cadence, NaN guard, preemption, evaluation passes."""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from research.errors import DivergedError


def every(period: int | None, step: int) -> bool:
    """True on multiples of `period` (never when period is None or 0)."""
    return bool(period) and step % period == 0


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    """Raise DivergedError if the loss, gradient or parameter norm is NaN or infinite.

    The parameter norm is that of the updated parameters, so a state that passed this check is
    safe to checkpoint.
    """
    for key in ("train/loss", "train/grad_norm", "train/param_norm"):
        if key in metrics and not np.isfinite(metrics[key]):
            raise DivergedError(
                f"training diverged at step {step}: {key}={metrics[key]}; the last good "
                "checkpoint is kept (lower optimizer.learning_rate or set optimizer.grad_clip_norm)"
            )


class Preemption:
    """Turns SIGTERM into a request to save and stop at the next step boundary.

    With several processes the request is agreed on every `sync_every` steps, so that all
    hosts stop (and save) at the same step.
    """

    def __init__(self, sync_every: int = 10):
        self._event = threading.Event()
        self._sync_every = sync_every
        self._previous = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._event.set()

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit now (identical on every process)."""
        if jax.process_count() == 1:
            return self._event.is_set()
        if step % self._sync_every:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self._event.is_set()))
        return bool(np.any(flags))


@dataclasses.dataclass
class Monitor:
    """Watches the validation metric at every eval: reduce-on-plateau and early stopping.

    Its state is plain JSON, saved in each checkpoint's metadata, so a resumed run makes the same
    decisions as an uninterrupted one.
    """

    metric: str
    mode: str  # "max" | "min"
    plateau: bool = False
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    plateau_min_delta: float = 0.0
    patience: int | None = None  # early stopping; None: never
    min_delta: float = 0.0
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        defaults = {"best": None, "since_best": 0, "plateau_best": None, "since_cut": 0}
        self.state = {**defaults, "lr_scale": 1.0, "stopped": None, **self.state}

    @property
    def active(self) -> bool:
        """Whether anything watches the metric."""
        return self.plateau or self.patience is not None

    @property
    def lr_scale(self) -> float:
        """The factor reduce-on-plateau applies to the learning rate now."""
        return self.state["lr_scale"]

    @property
    def stopped(self) -> str | None:
        """Why training stopped early, or None."""
        return self.state["stopped"]

    def _better(self, value: float, best: float | None, delta: float) -> bool:
        if best is None:
            return True
        return value > best + delta if self.mode == "max" else value < best - delta

    def observe(self, step: int, value: float) -> None:
        """Record one eval of the metric; may cut the learning rate or decide to stop."""
        s = self.state
        if self._better(value, s["best"], self.min_delta):
            s["best"], s["since_best"] = value, 0
        else:
            s["since_best"] += 1
        if self.plateau:
            if self._better(value, s["plateau_best"], self.plateau_min_delta):
                s["plateau_best"], s["since_cut"] = value, 0
            else:
                s["since_cut"] += 1
                if s["since_cut"] >= self.plateau_patience:
                    s["lr_scale"], s["since_cut"] = s["lr_scale"] * self.plateau_factor, 0
        if self.patience is not None and s["since_best"] >= self.patience:
            s["stopped"] = (
                f"{self.metric} did not improve by more than {self.min_delta:g} for "
                f"{self.patience} evals (stopped at step {step})"
            )
