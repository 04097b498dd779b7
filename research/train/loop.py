"""`train_and_evaluate(config, workdir)`: the one training loop every model family runs through.

It only wires the pieces and runs hooks on their cadence: build and check (nothing written),
restore or initialise the state, write the run files, train, evaluate, summarise. What a
feature adds (transfer, continual stages, distillation, a family's report) comes in through
the extension phases (research/train/extension.py); the loop imports no feature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import numpy as np

from research import config as cfg
from research import storage
from research.errors import DivergedError
from research.tracking import Progress, resolve_wandb_mode
from research.train import evaluation, extensions, summary
from research.train.hooks import Preemption, check_finite, every
from research.train.session import (
    Session,
    describe_optimizer,
    make_tracker,
    manifest_of,
    open_session,
)
from research.train.setup import Run, build_run
from research.train.workdir import check_workdir, write_run_files
from research.train.workdir_lock import WorkdirLock

COMPLETED, PREEMPTED = "completed", "preempted"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a call ended: `completed` (summary written) or `preempted` (saved after a stop
    signal, named in `reason`)."""

    status: str
    step: int
    summary: dict[str, Any]
    reason: str = ""


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> RunResult:
    """Train `config` into `workdir` (a local path or gs://...), resuming from the workdir's
    latest checkpoint if any."""
    workdir = storage.workdir_path(workdir)
    run = build_run(config, extensions.available())
    extensions.check(run)
    config_json = cfg.to_json(run.config)
    check_workdir(workdir, config_json)
    resolve_wandb_mode(run.config.tracking.wandb_mode)  # a bad mode fails before any write
    with contextlib.ExitStack() as stack:
        if _is_main():  # one writer per workdir: a second run into it stops here
            stack.enter_context(WorkdirLock(workdir))
        session, state = open_session(
            run, workdir, extensions.for_run(run), stack, is_main=_is_main()
        )
        manifest = manifest_of(run)
        if _is_main():
            vocabulary = run.prepared.vocabulary
            write_run_files(
                workdir,
                config_json,
                manifest,
                run.optimizer.table,
                vocabulary.to_json() if vocabulary is not None else None,
                run.optimizer_overrides,
            )
            print(describe_optimizer(run), flush=True)
        tracker = make_tracker(run, workdir, config_json, manifest, is_main=_is_main())
        session.tracker = stack.enter_context(tracker)
        session.tracker.truncate_after(session.start, first_logged=run.config.log_every_steps)
        # A stop signal (SIGTERM, Ctrl-C) is deferred to a step boundary until the final state
        # is saved; after that the entry point's handler may stop at once (nothing is unsaved).
        with Preemption() as preemption:
            state = _train(session, state, preemption)
            if state is not None:
                state, eval_metrics = _final_checkpoint(session, state, preemption)
        if state is None:
            session.ckpt.wait()
            return RunResult(PREEMPTED, session.ckpt.latest_step() or 0, {}, preemption.reason)
        return RunResult(COMPLETED, run.total_steps, summary.finish(session, state, eval_metrics))


def _train(session: Session, state: Any, preemption: Preemption) -> Any | None:
    """Run the steps after `session.start` up to the total (or until early stopping); the final
    device state, or None if preempted (after saving)."""
    run, c = session.run, session.run.config
    enabled = c.tracking.progress and _is_main()
    metrics = None
    progress = Progress(run.total_steps, session.start, c.batch_size, enabled=enabled)
    with contextlib.closing(progress) as bar:
        try:
            for step in range(session.start + 1, run.total_steps + 1):
                if session.monitor.stopped:
                    break
                if preemption.should_stop(step - 1):
                    _save_on_preemption(session, state, step - 1, metrics)
                    return None
                batch = run.par.put_batch(next(session.batches))
                logged = every(c.log_every_steps, step) or step == run.total_steps
                state, metrics = (run.train_step if logged else run.quiet_step)(state, batch)
                state = _after_step(session, state, metrics, step)
                bar.update(step)
        except DivergedError as e:
            raise DivergedError(f"{e}; {session.kept_checkpoint()}") from None
    return state


def _after_step(session: Session, state: Any, metrics: dict, step: int) -> Any:
    """Log, evaluate, watch and checkpoint on their cadences; metrics reach the host only here."""
    run, c, tracker = session.run, session.run.config, session.tracker
    log_now, ckpt_now = every(c.log_every_steps, step), every(c.checkpoint.every_steps, step)
    last = step == run.total_steps
    if log_now or ckpt_now or last or session.guard.needs_reference:
        host = _fetch(run, metrics)
        if log_now or last:
            tracker.log(step, {**host, "train/wall_time": session.wall_time()})
        session.guard.check(host, step)  # before any save: a checkpoint never holds a NaN state
    eval_metrics = None
    if every(c.eval_every_steps, step) and not last:
        task = session.eval_task(step)
        eval_metrics = evaluation.evaluate(run, state, "eval", task_id=task)[0]
        state = _watch(session, state, step, eval_metrics)
        tracker.log(step, {**eval_metrics, "eval/wall_time": session.wall_time()})
    for feature in session.features:  # e.g. a continual stage's end: evaluate all, consolidate
        state = feature.after_step(run, state, step, lambda m: tracker.log(step, m))
    if ckpt_now and not last:
        session.save(state, step, eval_metrics)
    return state


def _watch(session: Session, state: Any, step: int, eval_metrics: dict[str, float]) -> Any:
    """Feed the monitor; apply a reduced learning-rate scale to the state if it changed."""
    monitor = session.monitor
    if not monitor.active:
        return state
    before = monitor.lr_scale
    monitor.observe(step, eval_metrics[monitor.metric])
    if monitor.plateau:
        eval_metrics["eval/lr_scale"] = monitor.lr_scale
    if monitor.lr_scale == before:
        return state
    scale = session.run.par.replicate(np.float32(monitor.lr_scale))
    return state.replace(extras={**state.extras, "lr_scale": scale})


def _save_on_preemption(session: Session, state: Any, step: int, metrics: dict | None) -> None:
    """A stop signal: save the state after `step` (if finite and not saved already)."""
    if metrics is not None:
        check_finite(_fetch(session.run, metrics), step)
    if session.ckpt.latest_step() != step:
        session.save(state, step, None)


def _final_checkpoint(
    session: Session, state: Any, preemption: Preemption
) -> tuple[Any, dict | None]:
    """(final state, its eval metrics), saved as the last checkpoint: after early stopping, the
    best state. (None, None) when a stop signal came meanwhile: the save stands, a rerun
    finishes from it."""
    run, step = session.run, session.run.total_steps
    if session.monitor.stopped and session.start < step:  # just stopped early: take the best
        state = session.restore_best() or state
    task = session.eval_task(step)
    eval_metrics, _ = evaluation.evaluate(run, state, "eval", task_id=task)
    if session.ckpt.latest_step() != step:
        session.save(state, step, eval_metrics)
    session.ckpt.wait()
    if preemption.should_stop(step, sync=True):
        return None, None
    return state, eval_metrics


def _fetch(run: Run, metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in run.par.to_host(metrics).items()}


def _is_main() -> bool:
    return jax.process_index() == 0
