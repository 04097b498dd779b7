"""Checkpoints: an Orbax `CheckpointManager` saving train state, data-iterator state and metadata.

This is the only module that imports orbax. A checkpoint step holds three items written together:
`state` (the TrainState pytree), `data` (the input pipeline's JSON state) and `meta` (step, wall
time, the retention policy and whatever the caller adds). Orbax writes each step into a temporary
directory and renames it (or writes a commit marker on object stores) only once every item is
complete, so a killed process never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from research.errors import ConfigError, WorkdirError

PyTree = Any

_STATE, _DATA, _META = "state", "data", "meta"
_BEST_MODES = ("max", "min")

log = logging.getLogger(__name__)


def _metric_getter(name: str):
    """Returns a function reading `name` from a checkpoint's metrics dict (for ranking)."""

    def get(metrics: Mapping[str, float]) -> float:
        return float(metrics[name])

    return get


def _preservation_policy(keep: int, best_metric: str | None, best_mode: str):
    """Keeps the last `keep` steps, plus the single best one by `best_metric` when given."""
    latest = ocm.LatestN(n=keep)
    if best_metric is None:
        return latest
    # BestN sorts ascending and keeps the tail, so `reverse` puts the smallest last for "min".
    # Steps saved without the metric are left to LatestN instead of being kept forever.
    best = ocm.BestN(
        get_metric_fn=_metric_getter(best_metric),
        reverse=best_mode == "min",
        n=1,
        keep_checkpoints_without_metrics=False,
    )
    return ocm.AnyPreservationPolicy([latest, best])


def _open_manager(
    directory: str,
    *,
    keep: int | None,
    best_metric: str | None,
    best_mode: str,
    async_save: bool,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """Builds the CheckpointManager for `directory`; `keep=None` means keep everything."""
    policy = None if keep is None else _preservation_policy(keep, best_metric, best_mode)
    options = ocp.CheckpointManagerOptions(
        # `best_fn` makes orbax store the metrics with each step and answer `best_step`;
        # which steps survive is decided by the preservation policy alone.
        best_fn=None if best_metric is None else _metric_getter(best_metric),
        best_mode=best_mode,
        preservation_policy=policy,
        enable_async_checkpointing=async_save,
        # Temporary dirs left by a killed save are never valid checkpoints; remove them on start.
        cleanup_tmp_directories=not read_only,
        create=not read_only,
        read_only=read_only,
    )
    handlers = {
        # Reading another run (`init_from`) may take a subset of its state: only the PyTree
        # handler restores partially. Both handlers read and write the same format.
        _STATE: ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler(),
        _DATA: ocp.JsonCheckpointHandler(),
        _META: ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _ranking_metrics(metrics: Mapping[str, float] | None, best_metric: str | None) -> dict | None:
    """The metrics orbax should rank this step by, or None when it has no finite `best_metric`."""
    if best_metric is None or not metrics or best_metric not in metrics:
        return None
    value = float(metrics[best_metric])
    # A NaN/inf (a diverged eval) must never become the "best" checkpoint.
    if not math.isfinite(value):
        return None
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def _leaf_shapes(tree: PyTree) -> dict[str, tuple]:
    """`a/b/0/c` path -> shape for every array leaf (abstract, concrete or orbax metadata)."""

    def name(key) -> str:
        # DictKey.key, SequenceKey.idx, GetAttrKey.name: a dataclass field and the dict orbax
        # stores it as give the same path.
        return str(next(getattr(key, a) for a in ("key", "idx", "name") if hasattr(key, a)))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(name, path)): tuple(getattr(v, "shape", ())) for path, v in leaves}


def _check_fits(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: PyTree,
    error: type[Exception],
    partial: bool = False,
) -> None:
    """Raises `error` naming the parameters whose shapes differ between checkpoint and target,
    or that exist on one side only (orbax's own message does not name them). With `partial`,
    checkpoint entries the target leaves out are fine (only the target's entries must fit)."""
    have = _leaf_shapes(manager.item_metadata(step)[_STATE])
    want = _leaf_shapes(abstract_state)
    if partial:  # the target may leave out any part of the checkpoint (e.g. a replaced head)
        have = {k: v for k, v in have.items() if k in want}
    problems = [
        f"{k}: checkpoint {have[k]} vs target {want[k]}"
        for k in sorted(have.keys() & want.keys())
        if have[k] != want[k]
    ]
    problems += [f"{k}: missing from the checkpoint" for k in sorted(want.keys() - have.keys())]
    problems += [f"{k}: not in the target" for k in sorted(have.keys() - want.keys())]
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise error(
            f"checkpoint {manager.directory}/{step} does not fit the state being restored: "
            + "; ".join(problems[:5])
            + more
        )


class Checkpointer:
    """Orbax CheckpointManager wrapper: state + data-iterator state + metadata saved together."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
    ) -> None:
        """Opens (creating if needed) the checkpoint directory; keeps the last `keep` + the best."""
        if keep < 1:
            raise ConfigError(f"checkpoint keep={keep}: must be at least 1")
        if best_mode not in _BEST_MODES:
            raise ConfigError(f"checkpoint best_mode={best_mode!r}: must be one of {_BEST_MODES}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._closed = False
        self._manager = _open_manager(
            self.directory,
            keep=keep,
            best_metric=best_metric,
            best_mode=best_mode,
            async_save=async_save,
        )

    def latest_step(self) -> int | None:
        """The highest complete checkpoint step, or None when there is none."""
        # Orbax answers with the last step saved in this process, which differs after out-of-order
        # saves; the highest step is what a resume wants, and what a fresh manager reports.
        return max(self._manager.all_steps(), default=None)

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (the latest step when no metric is tracked)."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        data_state: dict | None = None,
        metrics: Mapping[str, float] | None = None,
        metadata: Mapping | None = None,
    ) -> None:
        """Saves `state`, `data_state` and metadata as checkpoint `step` (async when enabled).

        Always saves: the caller owns the cadence. Returns once device buffers are copied, so the
        caller may donate `state` afterwards. An error from a previous async save is raised here.
        Saving a step that already exists is a no-op (e.g. a preemption save at a periodic step).
        Every process calls this; `data_state` and `metadata` (JSON) are written by process 0
        only, so they must be the same on all processes (a global pipeline position).
        """
        step = int(step)
        if step in self._manager.all_steps():
            log.info(
                "checkpoint for step %d already exists in %s; not saving", step, self.directory
            )
            self._manager.wait_until_finished()
            return
        meta = {
            **dict(metadata or {}),
            "step": step,
            "wall_time": time.time(),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "best_metric": self.best_metric,
            "best_mode": self.best_mode,
        }
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _DATA: ocp.args.JsonSave(dict(data_state or {})),
                _META: ocp.args.JsonSave(meta),
            }
        )
        metrics_for_ranking = _ranking_metrics(metrics, self.best_metric)
        self._manager.save(step, args=args, metrics=metrics_for_ranking, force=True)

    def restore(
        self, abstract_state: PyTree, step: int | None = None
    ) -> tuple[PyTree, dict | None, dict]:
        """Restores `(state, data_state, metadata)` at `step` (None: latest) onto the shardings in
        `abstract_state` (jax.ShapeDtypeStruct leaves with `.sharding`), whatever mesh wrote it.

        `data_state` is None when the checkpoint was saved without one.
        """
        self._manager.wait_until_finished()
        step = self._resolve_step(step)
        _check_fits(self._manager, step, abstract_state, WorkdirError)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE: ocp.args.StandardRestore(abstract_state),
                    _DATA: ocp.args.JsonRestore(),
                    _META: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[_STATE], (restored[_DATA] or None), dict(restored[_META])

    def _resolve_step(self, step: int | None) -> int:
        """Maps None to the latest step and checks the step exists, naming the directory if not."""
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise WorkdirError(f"no complete checkpoint in {self.directory}")
            return steps[-1]
        if int(step) not in steps:
            raise WorkdirError(f"no checkpoint for step {step} in {self.directory}; have {steps}")
        return int(step)

    def wait(self) -> None:
        """Blocks until pending async saves are committed; re-raises their errors."""
        self._manager.wait_until_finished()
        self._manager.check_for_errors()

    def close(self) -> None:
        """Waits for pending saves and releases orbax resources; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_only_manager(directory: str, best_metric: str | None = None, best_mode: str = "max"):
    """A manager that lists and reads another run's checkpoints without touching them."""
    return _open_manager(
        directory,
        keep=None,
        best_metric=best_metric,
        best_mode=best_mode,
        async_save=False,
        read_only=True,
    )


def _best_step(manager: ocp.CheckpointManager, directory: str) -> int:
    """The best step of a finished run, ranked by the metric recorded in its checkpoints."""
    latest = manager.latest_step()
    meta = manager.restore(latest, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
    best_metric, best_mode = meta[_META].get("best_metric"), meta[_META].get("best_mode", "max")
    if best_metric is None:
        raise ConfigError(
            f"init_from step 'best': the checkpoints in {directory} track no best metric; "
            "use the latest step instead"
        )
    ranked = _read_only_manager(directory, best_metric, best_mode)
    try:
        best = ranked.best_step()
    finally:
        ranked.close()
    if best is None:
        raise WorkdirError(f"no checkpoint in {directory} records the metric {best_metric!r}")
    return best


def load_state(
    directory: str | os.PathLike, abstract_state: PyTree, step: int | str | None = None
) -> PyTree:
    """Read-only restore of the train state from another run's checkpoints (`init_from`).

    `step` is None (latest), "best" (by the metric that run tracked) or a step number. A dict
    `abstract_state` restores only those top-level entries (e.g. `{"params": ...,
    "batch_stats": ...}`), so the other run may have used another optimizer.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise WorkdirError(f"init_from: checkpoint directory {directory} does not exist")
    manager = _read_only_manager(directory)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise WorkdirError(f"init_from: no complete checkpoint in {directory}")
        if step == "best":
            step = _best_step(manager, directory)
        elif step is None:
            step = steps[-1]
        elif isinstance(step, str) or int(step) not in steps:
            raise ConfigError(
                f"init_from step {step!r}: not a checkpoint in {directory}; "
                f"use None, 'best' or one of {steps}"
            )
        partial = isinstance(abstract_state, Mapping)
        _check_fits(manager, int(step), abstract_state, ConfigError, partial=partial)
        item = _pytree_restore(abstract_state, partial)
        return manager.restore(int(step), args=ocp.args.Composite(**{_STATE: item}))[_STATE]
    finally:
        manager.close()


def _pytree_restore(abstract_state: PyTree, partial: bool) -> ocp.args.PyTreeRestore:
    """Restore onto the target's shapes, dtypes and shardings; `partial`: only its subtrees."""
    restore_args = jax.tree.map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype),
        abstract_state,
    )
    return ocp.args.PyTreeRestore(
        item=abstract_state, restore_args=restore_args, partial_restore=partial
    )
