"""One call of the training loop, besides the state itself: where it saves (the checkpointer),
what it logs to (the tracker), the train batches, the watchers, and the run's features.

`open_session` restores or initialises the state; `Session.save` / `Session.restore_best` are
the only ways the loop touches checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any

import jax
from etils import epath

from research import data, rundir
from research.checkpoint import Checkpointer
from research.manifest import build_manifest
from research.optim import rules
from research.tracking import Tracker
from research.train.extension import Extension
from research.train.hooks import DivergenceGuard, Monitor
from research.train.setup import Run

TRAIN_SECONDS = "train_seconds"  # checkpoint metadata: wall time of training up to that step


@dataclasses.dataclass
class Session:
    """What one call of the loop works with, besides the state itself."""

    run: Run
    workdir: epath.Path
    ckpt: Checkpointer
    batches: Any  # the training iterator (its position is checkpointed)
    monitor: Monitor
    guard: DivergenceGuard
    start: int  # the last step already trained (0 for a fresh run)
    features: tuple[Extension, ...] = ()  # the extensions this run uses, in phase order
    tracker: Tracker | None = None  # opened after the run files are written
    seconds_before: float = 0.0  # training time of the calls this one resumes (checkpointed)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def wall_time(self) -> float:
        """Seconds of training so far, summed over this call and the ones it resumes."""
        return self.seconds_before + time.monotonic() - self.started

    def save(self, state: Any, step: int, metrics: dict | None) -> None:
        """Checkpoint `state` after `step`, with the data position and the watchers' state."""
        self.tracker.flush()  # on an object store: the history up to this checkpoint
        self.ckpt.save(
            step,
            self.run.par.from_device(state),
            data_state=self.batches.get_state(),
            metrics=metrics,
            # Copies: saves commit asynchronously.
            metadata={
                "monitor": dict(self.monitor.state),
                "divergence": dict(self.guard.state),
                TRAIN_SECONDS: self.wall_time(),
            },
        )

    def restore_best(self) -> Any:
        """The best checkpoint's state on the devices (None if no checkpoint has the metric)."""
        self.ckpt.wait()
        best = self.ckpt.best_step()
        if best is None:
            return None
        abstract = self.run.par.abstract_state(self.run.init_fn, jax.random.PRNGKey(0))
        state, _, _ = self.ckpt.restore(abstract, best)
        return self.run.par.to_device(state)

    def kept_checkpoint(self) -> str:
        """What a diverged run leaves behind, and what to change."""
        self.ckpt.wait()  # a pending save holds an earlier, checked state
        latest, since = self.ckpt.latest_step(), self.guard.state["since"]
        fix = "lower optimizer.learning_rate or set optimizer.grad_clip_norm, in a new --workdir"
        if latest is None:
            return f"no checkpoint was saved; {fix}"
        after = f", saved after the loss rose at step {since}" if since and latest >= since else ""
        return f"the latest checkpoint (step {latest}{after}) is kept; {fix}"

    def eval_task(self, step: int) -> int | None:
        """The task the evaluation at train step `step` is on (None: the run's only task)."""
        tasks = [f.eval_task(self.run, step) for f in self.features]
        return next((t for t in tasks if t is not None), None)


def open_session(
    run: Run,
    workdir: epath.Path,
    features: tuple[Extension, ...],
    stack: contextlib.ExitStack,
    is_main: bool,
) -> tuple[Session, Any]:
    """(session, device state): resumed from the latest intact checkpoint, or fresh.

    A fresh state (and `init_from`) is built before the checkpoint directory is created, so a
    bad `init_from` fails with nothing written. A damaged latest checkpoint is moved aside with
    a warning and the newest intact one resumed (a WorkdirError if none is).
    """
    directory = rundir.RunDir(workdir).checkpoints
    rng = jax.random.PRNGKey(run.config.seed)
    fresh = None if directory.is_dir() else _fresh_state(run, rng, features)
    ckpt = stack.enter_context(_checkpointer(run, directory))
    batches = _train_batches(run)
    start, meta = 0, {}
    if ckpt.latest_step() is None:
        state = fresh if fresh is not None else _fresh_state(run, rng, features)
    else:
        abstract = run.par.abstract_state(run.init_fn, rng)
        start, state, data_state, meta = ckpt.restore_latest_intact(abstract)
        if data_state:  # every save records it; without it the data would restart at batch 0
            batches.set_state(data_state)
        if is_main:
            print(f"resuming from step {start} ({directory})", flush=True)
    c = run.config.divergence
    session = Session(
        run,
        workdir,
        ckpt,
        batches,
        monitor=_monitor(run, meta.get("monitor", {})),
        guard=DivergenceGuard(c.loss_factor, c.patience, dict(meta.get("divergence", {}))),
        start=start,
        features=features,
        seconds_before=float(meta.get(TRAIN_SECONDS, 0.0)),
    )
    return session, run.par.to_device(state)


def manifest_of(run: Run) -> dict:
    """manifest.json's content for this invocation (code, devices, mesh, seeds)."""
    manifest = build_manifest(mesh_shape=dict(run.par.mesh.shape), seeds={"seed": run.config.seed})
    manifest["parallel"] = run.par.describe()
    return manifest


def make_tracker(
    run: Run, workdir: epath.Path, config_json: str, manifest: dict, is_main: bool
) -> Tracker:
    """The run's tracker (metrics.jsonl, summary.json, W&B) as `config.tracking` sets it up."""
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
        is_main=is_main,
    )


def describe_optimizer(run: Run) -> str:
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


def _fresh_state(run: Run, rng: jax.Array, features: tuple[Extension, ...]) -> Any:
    """Initialised state, as the features change it (a teacher's variables, source weights)."""
    state = run.par.init_state(run.init_fn, rng)
    for feature in features:
        state = feature.initial_state(run, state, rng)
    return state


def _monitor(run: Run, state: dict) -> Monitor:
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


def _checkpointer(run: Run, directory: epath.Path) -> Checkpointer:
    c = run.config.checkpoint
    return Checkpointer(
        directory,
        keep=c.keep,
        best_metric=c.best_metric or None,
        best_mode=c.best_mode,
        async_save=c.async_save,
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
