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
from research.interrupts import STOP_SIGNALS, signal_name


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
            raise DivergedError(f"training diverged at step {step}: {key}={metrics[key]}")


@dataclasses.dataclass
class DivergenceGuard:
    """Stops a run whose training loss is non-finite, or finite but blown up: above
    `loss_factor` times its first value at `patience` consecutive checks (the loop checks at
    every log step). A run at lr=1e6 reaches losses of 1e12 without a NaN and would otherwise
    end "successfully" at chance accuracy.

    Its state is plain JSON, saved in each checkpoint's metadata, so a resumed run keeps the
    reference loss of the step it started from.
    """

    loss_factor: float | None = 10.0  # 0 or None: only non-finite values count
    patience: int = 3
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = {"initial": None, "above": 0, "since": None, **self.state}

    @property
    def needs_reference(self) -> bool:
        """True until the first training loss has been seen."""
        return bool(self.loss_factor) and self.state["initial"] is None

    def limit(self) -> float | None:
        """The loss above which a check counts as blown up (None: rule off)."""
        initial = self.state["initial"]
        if not self.loss_factor or not initial:  # no reference, or a zero loss to scale
            return None
        # Written so a negative initial loss (a continuous likelihood) still gives a limit
        # above it; for a positive one it is loss_factor * initial.
        return initial + (self.loss_factor - 1.0) * abs(initial)

    def check(self, metrics: Mapping[str, float], step: int) -> None:
        """Record one fetched set of training metrics; raise DivergedError when diverged."""
        check_finite(metrics, step)
        loss = metrics.get("train/loss")
        if loss is None or not self.loss_factor:
            return
        s = self.state
        if s["initial"] is None:
            s["initial"] = float(loss)
            return
        limit = self.limit()
        if limit is None or loss <= limit:
            s["above"], s["since"] = 0, None
            return
        s["above"], s["since"] = s["above"] + 1, s["since"] or step
        if s["above"] >= self.patience:
            raise DivergedError(
                f"training diverged at step {step}: train/loss={loss:.4g} stayed above "
                f"{self.loss_factor:g}x its initial value ({s['initial']:.4g}) for "
                f"{s['above']} checks since step {s['since']}"
            )


class Preemption:
    """Turns a stop signal (SIGTERM, Ctrl-C) into a request to save and stop at the next step
    boundary. A second Ctrl-C quits at once, without saving.

    With several processes the request is agreed on every `sync_every` steps, so that all
    hosts stop (and save) at the same step.
    """

    def __init__(self, sync_every: int = 10):
        self._event = threading.Event()
        self._sync_every = sync_every
        self._previous: dict[int, Any] = {}
        self.signum: int | None = None  # the first stop signal received

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for a save
        self.signum = self.signum or signum
        self._event.set()

    @property
    def reason(self) -> str:
        """The signal that asked to stop, for messages."""
        return signal_name(self.signum) if self.signum else "a stop request"

    def should_stop(self, step: int, *, sync: bool = False) -> bool:
        """Whether to save and exit now (identical on every process). `sync`: agree now rather
        than at the next multiple of `sync_every`."""
        if jax.process_count() == 1:
            return self._event.is_set()
        if step % self._sync_every and not sync:
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
