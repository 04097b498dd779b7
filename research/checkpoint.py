"""Checkpoints: an Orbax `CheckpointManager` saving train state, data-iterator state and metadata.

This is the only module that imports orbax. A checkpoint step holds three items written together:
`state` (the TrainState pytree), `data` (the input pipeline's JSON state) and `meta` (step, wall
time, the retention policy, a CRC32 of every state leaf and whatever the caller adds). Orbax writes
each step into a temporary directory and renames it (or writes a commit marker on object stores)
only once every item is complete, so a killed process never leaves a checkpoint that looks complete.

A checkpoint damaged afterwards (a bad disk, a partial copy) either fails to read or reads back
other numbers; restore checks the CRCs and reports both as a `CheckpointDamagedError`. Resuming
(`restore_latest_intact`) then falls back to the newest intact step and moves the damaged ones
aside to `<step>.damaged`: kept for inspection, ignored by Orbax (not a step name), and out of the
way of the run saving that step again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from research import storage
from research.errors import ConfigError, UserError, WorkdirError

PyTree = Any

_STATE, _DATA, _META = "state", "data", "meta"
_CRC = "state_crc32"  # meta key: `a/b/c` leaf path -> "dtype:crc32" of the leaf's bytes
_DAMAGED = ".damaged"  # suffix of a damaged step moved aside; never parsed as a step by Orbax
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
    directory: epath.Path,
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


def _named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    """`(a/b/0/c path, leaf)` for every leaf, in pytree order."""

    def name(key) -> str:
        # DictKey.key, SequenceKey.idx, GetAttrKey.name: a dataclass field and the dict orbax
        # stores it as give the same path.
        return str(next(getattr(key, a) for a in ("key", "idx", "name") if hasattr(key, a)))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [("/".join(map(name, path)), v) for path, v in leaves]


def _leaf_shapes(tree: PyTree) -> dict[str, tuple]:
    """`a/b/0/c` path -> shape for every array leaf (abstract, concrete or orbax metadata)."""
    return {k: tuple(getattr(v, "shape", ())) for k, v in _named_leaves(tree)}


class CheckpointDamagedError(WorkdirError):
    """A checkpoint step whose files cannot be read, or that reads back other values than saved."""

    def __init__(self, directory: os.PathLike, step: int, reason: str) -> None:
        super().__init__(f"checkpoint step {step} in {directory} is damaged ({reason})")
        self.step, self.reason = step, reason


def _host_value(x: Any) -> np.ndarray | None:
    """The whole value of leaf `x` on this host, or None when this process holds only part."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:  # multi-process, replicated: every process has a full copy
        return np.asarray(x.addressable_data(0))
    # Sharded across processes: no process can checksum the whole array, and per-shard sums
    # would not survive a restore onto another layout; such leaves are left unverified.
    return None


def _checksums(tree: PyTree) -> dict[str, str]:
    """`path -> "dtype:crc32"` of every leaf this process holds whole (a copy to the host).

    CRC32 is made for catching accidental damage and runs at memory bandwidth (~1 GB/s here).
    """
    sums = {}
    for path, leaf in _named_leaves(tree):
        value = _host_value(leaf)
        if value is not None:
            sums[path] = f"{value.dtype}:{zlib.crc32(np.ascontiguousarray(value)):08x}"
    return sums


def _verify(directory: os.PathLike, step: int, state: PyTree, meta: Mapping) -> None:
    """Raises CheckpointDamagedError when restored leaves differ from the CRCs saved with them.

    Checkpoints written before CRCs were recorded have none and pass unchecked. A leaf restored
    with another dtype than saved (orbax casts to the target) cannot be compared and is skipped.
    """
    saved = meta.get(_CRC)
    if not saved:
        return
    restored = _checksums(state)
    differ = [
        k
        for k in sorted(saved.keys() & restored.keys())
        if saved[k] != restored[k] and saved[k].split(":")[0] == restored[k].split(":")[0]
    ]
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise CheckpointDamagedError(
            directory, step, f"values of {', '.join(differ[:3])}{more} differ from those saved"
        )


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost cause: TensorStore's own words, not Orbax's wrapper."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."


def _drop_abandoned_reads(previous: Callable[[Any], None], unraisable: Any) -> None:
    """`sys.unraisablehook` that drops what the reads Orbax abandoned print, passes the rest on.

    When one array fails to read, Orbax closes its event loop with the other reads in flight;
    as they end, TensorStore's callbacks raise "Event loop is closed" and Orbax's coroutines
    raise from their finalisers, each printed as a traceback: noise after the real error.
    """
    error, source = unraisable.exc_value, unraisable.object
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    code = getattr(source, "cr_code", None)
    if code is not None and code.co_filename.startswith(os.path.dirname(ocp.__file__)):
        return
    previous(unraisable)


@contextlib.contextmanager
def _reading(directory: os.PathLike, step: int) -> Iterator[None]:
    """Turns an error raised while reading checkpoint `step` into a CheckpointDamagedError.

    A damaged file makes Orbax/TensorStore raise ValueError, JSON/Unicode decode errors or a bare
    Exception, so everything except our own user errors (a shape mismatch) counts as damage.
    """
    previous = sys.unraisablehook
    if getattr(previous, "func", None) is not _drop_abandoned_reads:  # not after a failure
        sys.unraisablehook = functools.partial(_drop_abandoned_reads, previous)
    try:
        yield
    except UserError:
        sys.unraisablehook = previous
        raise
    except Exception as e:
        # The filter stays: the reads Orbax abandoned may end at any later time.
        raise CheckpointDamagedError(directory, step, _root_cause(e)) from e
    sys.unraisablehook = previous


def _on_every_process(ok: bool) -> bool:
    """True when `ok` holds on every process, so that all of them resume from the same step."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


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
        self.directory = storage.workdir_path(directory)  # local, or gs://
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._closed = False
        # A failed write (a full disk) ends like a failed read: abandoned TensorStore callbacks
        # print "Event loop is closed" tracebacks after the real error has been raised.
        self._unraisablehook = sys.unraisablehook
        sys.unraisablehook = functools.partial(_drop_abandoned_reads, self._unraisablehook)
        try:
            self._manager = _open_manager(
                self.directory,
                keep=keep,
                best_metric=best_metric,
                best_mode=best_mode,
                async_save=async_save,
            )
        except Exception as e:  # e.g. a damaged per-step metrics file, read to rank the steps
            raise WorkdirError(
                f"cannot read the checkpoints in {self.directory}: {_root_cause(e)}"
            ) from e

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
        only, so they must be the same on all processes (a global pipeline position). The CRCs
        of the state's leaves are computed here, before returning, from a host copy.
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
            _CRC: _checksums(state),
        }
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _DATA: ocp.args.JsonSave(dict(data_state or {})),
                _META: ocp.args.JsonSave(meta),
            }
        )
        metrics_for_ranking = _ranking_metrics(metrics, self.best_metric)
        with _writing(self.directory):
            self._manager.save(step, args=args, metrics=metrics_for_ranking, force=True)

    def restore(
        self, abstract_state: PyTree, step: int | None = None
    ) -> tuple[PyTree, dict | None, dict]:
        """Restores `(state, data_state, metadata)` at `step` (None: latest) onto the shardings in
        `abstract_state` (jax.ShapeDtypeStruct leaves with `.sharding`), whatever mesh wrote it.

        `data_state` is None when the checkpoint was saved without one. Raises
        CheckpointDamagedError when a file cannot be read or the state fails its CRCs.
        """
        self._manager.wait_until_finished()
        step = self._resolve_step(step)
        with _reading(self.directory, step):
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
        meta = dict(restored[_META])
        _verify(self.directory, step, restored[_STATE], meta)
        return restored[_STATE], (restored[_DATA] or None), meta

    def restore_latest_intact(
        self, abstract_state: PyTree
    ) -> tuple[int, PyTree, dict | None, dict]:
        """`(step, state, data_state, metadata)` of the newest checkpoint that restores intact.

        Each damaged newer step is moved aside to `<step>.damaged` (so saving that step again
        works) with a one-line warning on stderr. Raises WorkdirError naming the directory when
        there is no checkpoint or none is intact; then nothing is moved, as the cause may be
        something other than damage (e.g. memory).
        """
        self._manager.wait_until_finished()
        damaged: list[CheckpointDamagedError] = []
        for step in reversed(self.all_steps()):
            try:
                restored, error = self.restore(abstract_state, step), None
            except CheckpointDamagedError as e:
                restored, error = None, e
            if _on_every_process(error is None):
                self._set_aside(damaged, resumed_from=step)
                return step, *restored
            damaged.append(
                error
                or CheckpointDamagedError(self.directory, step, "unreadable on another process")
            )
        if not damaged:
            raise WorkdirError(f"no complete checkpoint in {self.directory}")
        raise WorkdirError(
            f"no intact checkpoint in {self.directory}: "
            + "; ".join(f"step {e.step}: {e.reason}" for e in damaged)
            + "; move the directory away to start the run afresh"
        )

    def _set_aside(self, damaged: list[CheckpointDamagedError], resumed_from: int) -> None:
        """Renames each damaged step to `<step>.damaged` (process 0, shared filesystem), warns."""
        if not damaged:
            return
        if jax.process_index() == 0:
            for error in damaged:
                aside = _free_name(self.directory / f"{error.step}{_DAMAGED}")
                storage.move(self.directory / str(error.step), aside)
                print(
                    f"warning: {error}; moved it to {aside}; resuming from step {resumed_from}",
                    file=sys.stderr,
                    flush=True,
                )
        if jax.process_count() > 1:  # the others list the steps only once they are moved
            multihost_utils.sync_global_devices("research.checkpoint: damaged steps moved aside")
        self._manager.reload()

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
        """Blocks until pending async saves are committed; re-raises their errors (a full or
        read-only disk as an OSError naming the directory)."""
        with _writing(self.directory):
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
            sys.unraisablehook = self._unraisablehook

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _writing(directory: os.PathLike) -> Iterator[None]:
    """Re-raises a failed write that TensorStore reports as ValueError (`[os_error_code='28']`)
    as the OSError it is, naming the checkpoint directory, so the entry point can say "No space
    left on device" in one line."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), os.fspath(directory)) from e


def _free_name(path: epath.Path) -> epath.Path:
    """`path`, or `path.2`, `path.3`, ... : the first that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _read_only_manager(
    directory: epath.Path, best_metric: str | None = None, best_mode: str = "max"
):
    """A manager that lists and reads another run's checkpoints without touching them."""
    return _open_manager(
        directory,
        keep=None,
        best_metric=best_metric,
        best_mode=best_mode,
        async_save=False,
        read_only=True,
    )


def _best_step(manager: ocp.CheckpointManager, directory: epath.Path) -> int:
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
    directory = storage.workdir_path(directory)
    if not directory.is_dir():
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
        step, partial = int(step), isinstance(abstract_state, Mapping)
        with _reading(directory, step):
            _check_fits(manager, step, abstract_state, ConfigError, partial=partial)
            item = _pytree_restore(abstract_state, partial)
            args = ocp.args.Composite(**{_STATE: item, _META: ocp.args.JsonRestore()})
            restored = manager.restore(step, args=args)
        _verify(directory, step, restored[_STATE], restored[_META])
        return restored[_STATE]
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
