"""The extension protocol: what a feature of a run (transfer, continual stages, a family's
end-of-run reporting) may do, at the phases the one loop offers.

The loop (`research/train/loop.py`) knows only this class; `research/train/extensions.py` lists
the features. Every phase does nothing by default, so a feature overrides only its own:

    optimizer_overrides
                   while the run is built: config keys for the optimizer alone (a transfer
                   strategy's frozen groups), asked of every extension given to `build_run`
    check          the built run, before anything is written (refuse a bad config)
    initial_state  a fresh state (not a resumed one), before training starts
    eval_task      which task the evaluation at a step is on (continual runs)
    after_step     after a step's logging, evaluation and watching, before its checkpoint
    summary        entries of summary.json, on every process
    finish         figures and summary entries of the final state, on process 0 only
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

Log = Callable[[dict[str, float]], None]  # logs metrics at the current step


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """What the `finish` phase gets: the final state of `run` and what its test pass left."""

    run: Any
    state: Any
    directory: epath.Path  # the run's plots/
    test_sums: dict[str, np.ndarray]  # the test pass's sums
    rows: Sequence[dict]  # the logged metrics

    @property
    def plots(self) -> bool:
        """Whether the run draws figures (`tracking.plots`)."""
        return bool(self.run.config.tracking.plots)


class Extension:
    """A feature plugged into the loop; subclasses override the phases they need."""

    def applies(self, run: Any) -> bool:
        """Whether this run uses the feature (`check` runs regardless)."""
        return True

    def optimizer_overrides(
        self, config: ml_collections.FrozenConfigDict, params: Any
    ) -> dict[str, Any]:
        """{dotted config key: value} to build the optimizer with, given the resolved config
        and the model's abstract params; asked before the run exists, so `applies` is not
        consulted. The run's config (config.json) keeps the user's values; the keys set are
        recorded in the workdir's optimizer_overrides.json."""
        return {}

    def check(self, run: Any) -> None:
        """Raise a ConfigError for a config the feature cannot honour; writes nothing."""

    def initial_state(self, run: Any, state: Any, rng: jax.Array) -> Any:
        """The fresh state, changed as the feature needs (e.g. source weights loaded)."""
        return state

    def eval_task(self, run: Any, step: int) -> int | None:
        """The task evaluated at train step `step`; None when the feature has no say."""
        return None

    def after_step(self, run: Any, state: Any, step: int, log: Log) -> Any:
        """The state after train step `step` (e.g. consolidated at a stage boundary)."""
        return state

    def summary(self, run: Any, state: Any, rows: Sequence[dict]) -> dict[str, Any]:
        """summary.json entries of the final state (`rows`: the logged metrics, [] off
        process 0)."""
        return {}

    def finish(self, end: RunEnd) -> tuple[list[epath.Path], dict[str, Any]]:
        """(figures written into `end.directory`, summary entries); process 0 only."""
        return [], {}
