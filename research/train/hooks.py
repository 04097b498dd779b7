"""Periodic actions around the train step: cadence, NaN guard, preemption, evaluation passes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from types import FrameType

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
