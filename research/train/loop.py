"""`train_and_evaluate(config, workdir)`: the one training loop every model family runs through.

It only wires the pieces and runs hooks on their cadence: build (no writes), prepare the workdir,
restore or initialise the state, train, evaluate, summarise.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from research import config as cfg
from research import data
from research.analysis import plots
from research.checkpoint import Checkpointer, load_state
from research.errors import WorkdirError
from research.manifest import build_manifest, write_json
from research.tracking import Progress, Tracker, read_metrics
from research.train.hooks import Preemption, check_finite, every
from research.train.setup import Run, build_run

COMPLETED, PREEMPTED = "completed", "preempted"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a call ended: `completed` (summary written) or `preempted` (saved after SIGTERM)."""

    status: str
    step: int
    summary: dict[str, Any]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> RunResult:
    """Train `config` into `workdir`, resuming from the workdir's latest checkpoint if any."""
    workdir = Path(workdir)
    run = build_run(config)
    manifest = _prepare_workdir(run, workdir)
    c = run.config
    ckpt = Checkpointer(
        workdir / "checkpoints",
        keep=c.checkpoint.keep,
        best_metric=c.checkpoint.best_metric or None,
        best_mode=c.checkpoint.best_mode,
        async_save=c.checkpoint.async_save,
    )
    tracker = _make_tracker(run, workdir, manifest)
    try:
        with Preemption() as preemption:
            state, batches, start = _initial_state(run, ckpt)
            tracker.truncate_after(start)
            state = _train(run, state, batches, start, ckpt, tracker, preemption)
        if state is None:
            return RunResult(PREEMPTED, _latest(ckpt), {})
        summary = _finish(run, state, workdir, ckpt, tracker)
        return RunResult(COMPLETED, run.total_steps, summary)
    finally:
        ckpt.close()
        tracker.close()


def _prepare_workdir(run: Run, workdir: Path) -> dict:
    """Refuse a workdir holding another config; write config.json and manifest.json."""
    config_json = cfg.to_json(run.config)
    existing = workdir / "config.json"
    if existing.exists():
        diff = _first_difference(cfg.identity(existing.read_text()), cfg.identity(config_json))
        if diff:
            raise WorkdirError(
                f"{workdir} holds a run with a different config ({diff}); "
                "use another --workdir, or delete this one to start over"
            )
    manifest = build_manifest(
        mesh_shape=dict(run.par.mesh.shape),
        seeds={"seed": run.config.seed},
    )
    manifest["parallel"] = run.par.describe()
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        existing.write_text(config_json + "\n")
        write_json(workdir / "manifest.json", manifest)
    return manifest


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    """The first dotted key whose value differs, as `key: old -> new` ('' if identical)."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return ""


def _make_tracker(run: Run, workdir: Path, manifest: dict) -> Tracker:
    t = run.config.tracking
    return Tracker(
        workdir,
        config=json.loads(cfg.to_json(run.config)),
        manifest=manifest,
        wandb_mode=t.wandb_mode,
        project=t.project,
        entity=t.entity,
        group=t.group,
        tags=list(t.tags),
        is_main=jax.process_index() == 0,
    )


def _train_batches(run: Run):
    return data.train_iterator(
        run.sources["train"],
        global_batch_size=run.config.batch_size,
        seed=run.config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transform=run.transform,
    )


def _initial_state(run: Run, ckpt: Checkpointer) -> tuple[Any, Any, int]:
    """(device state, train batch iterator, first step): resumed, warm-started, or fresh."""
    rng = jax.random.PRNGKey(run.config.seed)
    batches = _train_batches(run)
    latest = ckpt.latest_step()
    if latest is not None:
        abstract = run.par.abstract_state(run.init_fn, rng)
        state, data_state, _ = ckpt.restore(abstract, latest)
        if data_state:
            batches.set_state(data_state)
        return run.par.to_device(state), batches, latest
    state = run.par.init_state(run.init_fn, rng)
    if run.config.init_from:
        state = _warm_start(run, state, rng)
    return run.par.to_device(state), batches, 0


def _warm_start(run: Run, state: Any, rng: jax.Array) -> Any:
    """Take params and BatchNorm statistics from another run; optimizer state starts fresh."""
    path = Path(run.config.init_from)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    source = load_state(directory, run.par.abstract_state(run.init_fn, rng))
    return state.replace(params=source.params, batch_stats=source.batch_stats)


def _train(run, state, batches, start, ckpt, tracker, preemption) -> Any | None:
    """Run steps `start+1 .. total`; returns the final device state, or None if preempted."""
    c = run.config
    progress = Progress(
        run.total_steps, start, c.batch_size, enabled=c.tracking.progress and _is_main()
    )
    try:
        for step in range(start + 1, run.total_steps + 1):
            if preemption.should_stop(step - 1):
                if ckpt.latest_step() != step - 1:
                    _save(run, ckpt, state, batches, step - 1, metrics=None)
                return None
            state, metrics = run.train_step(state, run.par.put_batch(next(batches)))
            state = _after_step(run, state, metrics, step, batches, ckpt, tracker)
            progress.update(step)
    finally:
        progress.close()
    return state


def _after_step(run, state, metrics, step, batches, ckpt, tracker) -> Any:
    """Log, evaluate and checkpoint on their cadences; metrics reach the host only here."""
    c = run.config
    log_now, ckpt_now = every(c.log_every_steps, step), every(c.checkpoint.every_steps, step)
    if log_now or ckpt_now or step == run.total_steps:
        host = {k: float(v) for k, v in run.par.to_host(metrics).items()}
        if log_now or step == run.total_steps:
            tracker.log(step, host)
        check_finite(host, step)
    eval_metrics = None
    if every(c.eval_every_steps, step) and step < run.total_steps:
        eval_metrics = evaluate(run, state, "eval")[0]
        tracker.log(step, eval_metrics)
    if ckpt_now and step < run.total_steps:
        _save(run, ckpt, state, batches, step, eval_metrics)
    return state


def _save(run, ckpt, state, batches, step, metrics) -> None:
    ckpt.save(
        step,
        run.par.from_device(state),
        data_state=batches.get_state(),
        metrics=metrics,
        metadata={"time": time.time()},
    )


def evaluate(run: Run, state: Any, prefix: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One pass over the split reported as `prefix` (eval | test): metrics and raw sums."""
    c = run.config
    sums = None
    for batch in data.eval_batches(
        run.sources[prefix],
        global_batch_size=c.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transform=run.transform,
    ):
        out = run.eval_step(state, run.par.put_batch(batch))
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    sums = run.par.to_host(sums)
    metrics = {f"{prefix}/{k}": v for k, v in run.task.finalize(sums).items()}
    return metrics, sums


def _finish(run: Run, state: Any, workdir: Path, ckpt: Checkpointer, tracker: Tracker) -> dict:
    """Final eval and test passes, the last checkpoint, summary.json and plots."""
    step = run.total_steps
    eval_metrics, _ = evaluate(run, state, "eval")
    test_metrics, test_sums = evaluate(run, state, "test")
    if ckpt.latest_step() != step:
        ckpt.save(step, run.par.from_device(state), metrics=eval_metrics)
    if not _has_final_metrics(read_metrics(workdir), step):  # a rerun of a finished run
        tracker.log(step, {**eval_metrics, **test_metrics})
    ckpt.wait()
    rows = read_metrics(workdir)
    summary = {"step": step, **_last_train(rows), **eval_metrics, **test_metrics}
    summary.update(_best(rows, run.config.checkpoint.best_metric, run.config.checkpoint.best_mode))
    summary["test/confusion_matrix"] = np.asarray(test_sums["confusion"]).astype(int).tolist()
    tracker.write_summary(summary)
    if run.config.tracking.plots and _is_main():
        paths = [
            plots.learning_curves(rows, workdir / "plots" / "learning_curves.png"),
            plots.confusion_matrix(test_sums["confusion"], workdir / "plots" / "confusion.png"),
        ]
        tracker.log_images(paths)
    return summary


def _has_final_metrics(rows: list[dict], step: int) -> bool:
    return any(row["step"] == step and "test/loss" in row for row in rows)


def _last_train(rows: list[dict]) -> dict[str, float]:
    """The most recent value of every train/* metric."""
    last = {}
    for row in rows:
        last.update({k: v for k, v in row.items() if k.startswith("train/")})
    return last


def _best(rows: list[dict], metric: str, mode: str) -> dict[str, float]:
    """The best value of `metric` over the logged evals and its step."""
    points = [(row[metric], row["step"]) for row in rows if metric and metric in row]
    if not points:
        return {}
    value, step = (max if mode == "max" else min)(points, key=lambda p: p[0])
    return {f"best/{metric}": value, "best/step": step}


def _latest(ckpt: Checkpointer) -> int:
    ckpt.wait()
    return ckpt.latest_step() or 0


def _is_main() -> bool:
    return jax.process_index() == 0
