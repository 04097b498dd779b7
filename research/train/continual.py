"""Continual learning inside the one loop: stage boundaries, per-task evaluation, EWC/L2-SP.

A run with a continual task (`research.tasks.continual`) trains its tasks one after another.
After each stage the loop evaluates every task on the test split (row i of the accuracy matrix:
accuracy on task j after training stage i) and, when `ewc.weight > 0`, consolidates what the
stage learned into the EWC state kept in the optimizer state (so in the checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from research.optim import ewc
from research.tasks.continual import PermutedClassificationTask
from research.train import evaluation
from research.train.extension import Extension, Log
from research.train.setup import Run


def is_continual(run: Run) -> bool:
    """Whether the run trains several tasks in sequence."""
    return isinstance(run.task, PermutedClassificationTask)


def current_task(run: Run, step: int) -> int | None:
    """The task trained at train step `step` (1-based, as logged); None for ordinary runs."""
    return run.task.stage(step - 1) if is_continual(run) else None


def at_boundary(run: Run, step: int) -> bool:
    """Whether a task's stage ends with train step `step`."""
    return is_continual(run) and step in run.task.boundaries()


def stage_report(run: Run, state: Any) -> dict[str, float]:
    """Validation and test accuracy on every task: `{eval,test}/accuracy_task{j}` (hyper-
    parameters such as the EWC weight are chosen on the validation ones)."""
    report = {}
    for prefix in ("eval", "test"):
        for task in range(run.task.num_tasks):
            metrics, _ = evaluation.evaluate(run, state, prefix, task_id=task)
            report[f"{prefix}/accuracy_task{task}"] = metrics[f"{prefix}/accuracy"]
    return report


def consolidate(run: Run, state: Any, task: int) -> Any:
    """Fold task `task` into the EWC state (Fisher of its training data, or L2-SP anchors)."""
    c = run.config.ewc
    if not c.weight:
        return state
    host = run.par.from_device(state)
    if c.mode == "l2sp":
        new = ewc.l2sp_state(host.params)
    else:
        logits_fn = ewc.classifier_logits_fn(run.model, host.batch_stats or None)
        rng = jax.random.PRNGKey(run.config.seed + task)
        batches = _fisher_batches(run, task, c.fisher_examples)
        fisher = ewc.fisher_diagonal(logits_fn, host.params, batches, rng=rng, mode=c.fisher)
        new = ewc.consolidate(ewc.ewc_state_of(host.opt_state), host.params, fisher, gamma=c.gamma)
    opt_state = jax.device_put(ewc.with_ewc(host.opt_state, new), run.par.replicated)
    return run.par.to_device(host.replace(opt_state=opt_state))


def _fisher_batches(run: Run, task: int, count: int, batch: int = 100) -> list[tuple]:
    """The first `count` training examples as task `task` sees them, in batches."""
    source = run.sources["train"]
    records = [run.transform(source[i]) for i in range(min(count, len(source)))]
    images = run.task.permute(np.stack([r["image"] for r in records]), task)
    labels = np.stack([r["label"] for r in records])
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, len(images), batch)]


def accuracy_matrix(rows: list[dict], run: Run, prefix: str = "test") -> list[list[float]]:
    """matrix[i][j] = accuracy on task j (split `prefix`) after training stage i."""
    key = f"{prefix}/accuracy_task"
    by_step = {row["step"]: row for row in rows if f"{key}0" in row}
    n = run.task.num_tasks
    return [
        [by_step[s][f"{key}{j}"] for j in range(n)] for s in run.task.boundaries() if s in by_step
    ]


class ContinualStages(Extension):
    """Per-task evaluation, stage reports and consolidation at the boundaries, and the accuracy
    matrices in the summary."""

    def applies(self, run: Run) -> bool:
        return is_continual(run)

    def eval_task(self, run: Run, step: int) -> int | None:
        return current_task(run, step)

    def after_step(self, run: Run, state: Any, step: int, log: Log) -> Any:
        if not at_boundary(run, step):  # a task's stage ends: evaluate all, consolidate
            return state
        log(stage_report(run, state))
        if step < run.total_steps:
            state = consolidate(run, state, current_task(run, step))
        return state

    def summary(self, run: Run, state: Any, rows: Sequence[dict]) -> dict[str, Any]:
        if jax.process_index() != 0:  # only process 0 reads the logged history
            return {}
        return {
            f"{p}/accuracy_matrix": accuracy_matrix(list(rows), run, p) for p in ("eval", "test")
        }
