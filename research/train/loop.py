"""`train_and_evaluate(config, workdir)`: the one training loop every model family runs through.

It only wires the pieces and runs hooks on their cadence: build and check (nothing written),
restore or initialise the state, write the run files, train, evaluate, summarise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from research import config as cfg
from research import data, rundir, storage
from research.checkpoint import Checkpointer
from research.errors import DivergedError
from research.manifest import build_manifest
from research.optim import rules
from research.tracking import Progress, Tracker, resolve_wandb_mode
from research.train import evaluation, extensions
from research.train.extension import Extension
from research.train.hooks import DivergenceGuard, Monitor, Preemption, check_finite, every
from research.train.setup import Run, build_run
from research.train.workdir import check_workdir, write_run_files
from research.train.workdir_lock import WorkdirLock

COMPLETED, PREEMPTED = "completed", "preempted"
TRAIN_SECONDS = "train_seconds"  # checkpoint metadata: wall time of training up to that step


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a call ended: `completed` (summary written) or `preempted` (saved after a stop
    signal, named in `reason`)."""

    status: str
    step: int
    summary: dict[str, Any]
    reason: str = ""


@dataclasses.dataclass
class _Context:
    """What one call of the loop works with, besides the state itself."""

    run: Run
    workdir: epath.Path
    ckpt: Checkpointer
    tracker: Tracker
    batches: Any  # the training iterator (its position is checkpointed)
    monitor: Monitor
    guard: DivergenceGuard
    seconds_before: float = 0.0  # training time of the calls this one resumes (checkpointed)
    extensions: tuple[Extension, ...] = ()  # the features this run uses, in phase order
    started: float = dataclasses.field(default_factory=time.monotonic)

    def wall_time(self) -> float:
        """Seconds of training so far, summed over this call and the ones it resumes."""
        return self.seconds_before + time.monotonic() - self.started


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> RunResult:
    """Train `config` into `workdir` (a local path or gs://...), resuming from the workdir's
    latest checkpoint if any."""
    workdir = storage.workdir_path(workdir)
    run = build_run(config)
    extensions.check(run)
    features = extensions.for_run(run)
    config_json = cfg.to_json(run.config)
    check_workdir(workdir, config_json)
    resolve_wandb_mode(run.config.tracking.wandb_mode)  # a bad mode fails before any write
    with contextlib.ExitStack() as stack:
        if _is_main():  # one writer per workdir: a second run into it stops here
            stack.enter_context(WorkdirLock(workdir))
        checkpoints = rundir.RunDir(workdir).checkpoints
        ckpt, state, batches, start, meta = _initial_state(run, checkpoints, stack, features)
        manifest = _manifest(run)
        if _is_main():
            vocabulary = run.facts.get("vocabulary")
            write_run_files(
                workdir,
                config_json,
                manifest,
                run.optimizer.table,
                vocabulary.to_json() if vocabulary is not None else None,
            )
            print(_describe_optimizer(run), flush=True)
            if run.facts.get("description"):  # e.g. a series' stationarity test
                print(run.facts["description"], flush=True)
        tracker = stack.enter_context(_make_tracker(run, workdir, config_json, manifest))
        tracker.truncate_after(start, first_logged=run.config.log_every_steps)
        ctx = _Context(run, workdir, ckpt, tracker, batches, *_watchers(run, meta), features)
        # A stop signal (SIGTERM, Ctrl-C) is deferred to a step boundary until the final state
        # is saved; after that the entry point's handler may stop at once (nothing is unsaved).
        with Preemption() as preemption:
            state = _train(ctx, state, start, preemption)
            if state is not None:
                state, eval_metrics = _final_checkpoint(ctx, state, start, preemption)
        if state is None:
            ckpt.wait()
            return RunResult(PREEMPTED, ckpt.latest_step() or 0, {}, preemption.reason)
        return RunResult(COMPLETED, run.total_steps, _finish(ctx, state, eval_metrics))


def _watchers(run: Run, meta: dict) -> tuple[Monitor, DivergenceGuard, float]:
    """The monitor, the divergence guard and the training seconds, as a checkpoint left them."""
    c = run.config.divergence
    guard = DivergenceGuard(c.loss_factor, c.patience, dict(meta.get("divergence", {})))
    monitor = _make_monitor(run, meta.get("monitor", {}))
    return monitor, guard, float(meta.get(TRAIN_SECONDS, 0.0))


def _initial_state(
    run: Run,
    directory: epath.Path,
    stack: contextlib.ExitStack,
    features: tuple[Extension, ...],
) -> tuple[Checkpointer, Any, Any, int, dict]:
    """(checkpointer, device state, train batches, first step, the checkpoint's metadata):
    resumed, warm-started or fresh ({} for metadata).

    A fresh state (and `init_from`) is built before the checkpoint directory is created, so a
    bad `init_from` fails with nothing written. A damaged latest checkpoint is moved aside with
    a warning and the newest intact one resumed (a WorkdirError if none is).
    """
    rng = jax.random.PRNGKey(run.config.seed)
    fresh = None if directory.is_dir() else _fresh_state(run, rng, features)
    ckpt = stack.enter_context(_make_checkpointer(run, directory))
    batches = _train_batches(run)
    if ckpt.latest_step() is None:
        state = fresh if fresh is not None else _fresh_state(run, rng, features)
        return ckpt, run.par.to_device(state), batches, 0, {}
    abstract = run.par.abstract_state(run.init_fn, rng)
    latest, state, data_state, meta = ckpt.restore_latest_intact(abstract)
    if data_state:  # every save records it; without it the data would restart from batch 0
        batches.set_state(data_state)
    if _is_main():
        print(f"resuming from step {latest} ({directory})", flush=True)
    return ckpt, run.par.to_device(state), batches, latest, meta


def _fresh_state(run: Run, rng: jax.Array, features: tuple[Extension, ...]) -> Any:
    """Initialised state, as the features change it (a teacher's variables, source weights)."""
    state = run.par.init_state(run.init_fn, rng)
    for feature in features:
        state = feature.initial_state(run, state, rng)
    return state


def _make_monitor(run: Run, state: dict) -> Monitor:
    c = run.config
    return Monitor(
        metric=c.checkpoint.best_metric,
        mode=c.checkpoint.best_mode,
        plateau=c.optimizer.schedule == "plateau",
        plateau_factor=c.optimizer.plateau_factor,
        plateau_patience=c.optimizer.plateau_patience,
        plateau_min_delta=c.optimizer.plateau_min_delta,
        patience=c.early_stopping.patience,
        min_delta=c.early_stopping.min_delta,
        state=dict(state),
    )


def _make_checkpointer(run: Run, directory: epath.Path) -> Checkpointer:
    c = run.config.checkpoint
    return Checkpointer(
        directory,
        keep=c.keep,
        best_metric=c.best_metric or None,
        best_mode=c.best_mode,
        async_save=c.async_save,
    )


def _manifest(run: Run) -> dict:
    manifest = build_manifest(mesh_shape=dict(run.par.mesh.shape), seeds={"seed": run.config.seed})
    manifest["parallel"] = run.par.describe()
    return manifest


def _make_tracker(run: Run, workdir: epath.Path, config_json: str, manifest: dict) -> Tracker:
    t = run.config.tracking
    return Tracker(
        workdir,
        config=json.loads(config_json),
        manifest=manifest,
        wandb_mode=t.wandb_mode,
        project=t.project,
        entity=t.entity,
        group=t.group,
        tags=list(t.tags),
        is_main=_is_main(),
    )


def _train_batches(run: Run):
    return data.train_iterator(
        run.sources["train"],
        global_batch_size=run.config.batch_size,
        seed=run.config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transform=run.transform,
        augment=run.augment,
        shuffle=not run.config.data.tbptt,  # truncated BPTT reads its streams in order
    )


def _train(ctx: _Context, state: Any, start: int, preemption: Preemption) -> Any | None:
    """Run steps `start+1 .. total` (or until early stopping); the final device state, or None
    if preempted (after saving)."""
    run, c = ctx.run, ctx.run.config
    enabled = c.tracking.progress and _is_main()
    metrics = None
    with contextlib.closing(Progress(run.total_steps, start, c.batch_size, enabled=enabled)) as bar:
        try:
            for step in range(start + 1, run.total_steps + 1):
                if ctx.monitor.stopped:
                    break
                if preemption.should_stop(step - 1):
                    _save_on_preemption(ctx, state, step - 1, metrics)
                    return None
                state, metrics = run.train_step(state, run.par.put_batch(next(ctx.batches)))
                state = _after_step(ctx, state, metrics, step)
                bar.update(step)
        except DivergedError as e:
            raise DivergedError(f"{e}; {_kept_checkpoint(ctx)}") from None
    return state


def _kept_checkpoint(ctx: _Context) -> str:
    """What a diverged run leaves behind, and what to change."""
    ctx.ckpt.wait()  # a pending save holds an earlier, checked state
    latest, since = ctx.ckpt.latest_step(), ctx.guard.state["since"]
    fix = "lower optimizer.learning_rate or set optimizer.grad_clip_norm, in a new --workdir"
    if latest is None:
        return f"no checkpoint was saved; {fix}"
    after = f", saved after the loss rose at step {since}" if since and latest >= since else ""
    return f"the latest checkpoint (step {latest}{after}) is kept; {fix}"


def _after_step(ctx: _Context, state: Any, metrics: dict, step: int) -> Any:
    """Log, evaluate, watch and checkpoint on their cadences; metrics reach the host only here."""
    run, c = ctx.run, ctx.run.config
    log_now, ckpt_now = every(c.log_every_steps, step), every(c.checkpoint.every_steps, step)
    if log_now or ckpt_now or step == run.total_steps or ctx.guard.needs_reference:
        host = _fetch(run, metrics)
        if log_now or step == run.total_steps:
            ctx.tracker.log(step, {**host, "train/wall_time": ctx.wall_time()})
        ctx.guard.check(host, step)  # before any save: a checkpoint never holds a NaN state
    eval_metrics = None
    if every(c.eval_every_steps, step) and step < run.total_steps:
        task = _eval_task(ctx, step)
        eval_metrics = evaluation.evaluate(run, state, "eval", task_id=task)[0]
        state = _watch(ctx, state, step, eval_metrics)
        ctx.tracker.log(step, {**eval_metrics, "eval/wall_time": ctx.wall_time()})
    for feature in ctx.extensions:  # e.g. a continual stage's end: evaluate all, consolidate
        state = feature.after_step(run, state, step, lambda m: ctx.tracker.log(step, m))
    if ckpt_now and step < run.total_steps:
        _save(ctx, state, step, eval_metrics)
    return state


def _watch(ctx: _Context, state: Any, step: int, eval_metrics: dict[str, float]) -> Any:
    """Feed the monitor; apply a reduced learning-rate scale to the state if it changed."""
    monitor = ctx.monitor
    if not monitor.active:
        return state
    before = monitor.lr_scale
    monitor.observe(step, eval_metrics[monitor.metric])
    if monitor.plateau:
        eval_metrics["eval/lr_scale"] = monitor.lr_scale
    if monitor.lr_scale == before:
        return state
    scale = ctx.run.par.replicate(np.float32(monitor.lr_scale))
    return state.replace(extras={**state.extras, "lr_scale": scale})


def _save_on_preemption(ctx: _Context, state: Any, step: int, metrics: dict | None) -> None:
    """SIGTERM: save the state after `step` (if finite and not saved already)."""
    if metrics is not None:
        check_finite(_fetch(ctx.run, metrics), step)
    if ctx.ckpt.latest_step() != step:
        _save(ctx, state, step, None)


def _fetch(run: Run, metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in run.par.to_host(metrics).items()}


def _save(ctx: _Context, state: Any, step: int, metrics: dict | None) -> None:
    ctx.tracker.flush()  # on an object store: the history up to this checkpoint, written out
    ctx.ckpt.save(
        step,
        ctx.run.par.from_device(state),
        data_state=ctx.batches.get_state(),
        metrics=metrics,
        # A copy of the monitor state: saves commit asynchronously.
        metadata={
            "monitor": dict(ctx.monitor.state),
            "divergence": dict(ctx.guard.state),
            TRAIN_SECONDS: ctx.wall_time(),
        },
    )


def _restore_best(ctx: _Context) -> Any:
    """After early stopping: the best checkpoint's state (None if no checkpoint has the metric)."""
    ctx.ckpt.wait()
    best = ctx.ckpt.best_step()
    if best is None:  # no checkpoint recorded the metric yet: keep the current state
        return None
    abstract = ctx.run.par.abstract_state(ctx.run.init_fn, jax.random.PRNGKey(0))
    state, _, _ = ctx.ckpt.restore(abstract, best)
    return ctx.run.par.to_device(state)


def _final_checkpoint(
    ctx: _Context, state: Any, start: int, preemption: Preemption
) -> tuple[Any, dict | None]:
    """(final state, its eval metrics), saved as the last checkpoint: after early stopping, the
    best state. (None, None) when a stop signal came meanwhile: the save stands, a rerun
    finishes from it."""
    run, step = ctx.run, ctx.run.total_steps
    if ctx.monitor.stopped and start < run.total_steps:  # just stopped early: take the best
        state = _restore_best(ctx) or state
    task = _eval_task(ctx, step)
    eval_metrics, _ = evaluation.evaluate(run, state, "eval", task_id=task)
    if ctx.ckpt.latest_step() != step:
        _save(ctx, state, step, eval_metrics)
    ctx.ckpt.wait()
    if preemption.should_stop(step, sync=True):
        return None, None
    return state, eval_metrics


def _finish(ctx: _Context, state: Any, eval_metrics: dict) -> dict:
    """Test pass, summary.json and plots (the final checkpoint is saved already)."""
    run, step = ctx.run, ctx.run.total_steps
    task = _eval_task(ctx, step)
    test_metrics, test_sums = evaluation.evaluate(run, state, "test", task_id=task)
    # Only process 0 writes metrics.jsonl, so only it reads the file back (other hosts may not
    # share the filesystem, or may read it mid-write); their summary lacks the logged history.
    if not (_is_main() and evaluation.has_final_metrics(ctx.tracker.history(), step)):
        final = {**eval_metrics, **test_metrics, "eval/wall_time": ctx.wall_time()}
        ctx.tracker.log(step, final)  # once: a rerun logs nothing new
    rows = ctx.tracker.history()
    c = run.config.checkpoint
    summary = evaluation.summarize(
        rows, step, eval_metrics, test_metrics, c.best_metric, c.best_mode
    )
    summary.update({f"test/{k}": v for k, v in run.task.summary(test_sums).items()})
    summary.update(evaluation.compute_cost(run))
    summary.update(run.facts.get("summary", {}))  # from data preparation (ADF p-values)
    for feature in ctx.extensions:  # e.g. retention of a transfer, continual accuracy matrices
        summary.update(feature.summary(run, state, rows))
    if ctx.monitor.stopped:
        summary["early_stopping/reason"] = ctx.monitor.stopped
        summary["early_stopping/final_step"] = int(run.par.to_host(state.step))
    figures, plots_dir = [], rundir.RunDir(ctx.workdir).plots
    for feature in ctx.extensions if _is_main() else ():  # per-family figures and entries
        written, extra = feature.finish(run, state, plots_dir, test_sums, rows)
        figures += written
        summary.update(extra)
    ctx.tracker.write_summary(summary)
    if run.config.tracking.plots and _is_main():
        plots = evaluation.plot(run, rows, test_sums, plots_dir)
        ctx.tracker.log_images(plots + figures)
    return summary


def _eval_task(ctx: _Context, step: int) -> int | None:
    """The task the evaluation at train step `step` is on (None: the run's only task)."""
    tasks = [f.eval_task(ctx.run, step) for f in ctx.extensions]
    return next((t for t in tasks if t is not None), None)


def _describe_optimizer(run: Run) -> str:
    """The per-parameter groups (the full table is in param_rules.txt) and BatchNorm policy."""
    c = run.config
    lines = [f"optimizer {c.optimizer.name}, schedule {c.optimizer.schedule}; parameter groups:"]
    lines += ["  " + line for line in rules.group_summary(run.optimizer.table).splitlines()]
    if c.unfreeze.groups:
        starts = zip(c.unfreeze.groups, c.unfreeze.at_steps, strict=True)
        plan = ", ".join(f"{g}@{s}" for g, s in starts)
        lines.append(
            f"  unfreeze {plan}; BatchNorm statistics of frozen parts: {c.unfreeze.batch_norm}"
        )
    return "\n".join(lines)


def _is_main() -> bool:
    return jax.process_index() == 0
