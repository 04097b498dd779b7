"""Evaluation passes over a split, and the run summary and figures made from them."""

from pathlib import Path
from typing import Any

import jax
import numpy as np

from research import data, flops
from research.reporting import curves
from research.train.setup import Run


def evaluate(
    run: Run, state: Any, prefix: str, *, task_id: int | None = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One padded pass over the split reported as `prefix` (eval | test): metrics and raw sums.

    The task's masked sums are added up on device and fetched once at the end. `task_id`
    evaluates one task of a continual run.
    """
    sums = None
    for batch in data.eval_batches(
        run.sources[prefix],
        global_batch_size=run.config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transform=run.transform,
    ):
        if task_id is not None:
            batch = run.task.with_task(batch, task_id)
        out = run.eval_step(state, run.par.put_batch(batch))
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    sums = run.par.to_host(sums)
    metrics = {f"{prefix}/{k}": v for k, v in run.task.finalize(sums).items()}
    return metrics, sums


def has_final_metrics(rows: list[dict], step: int) -> bool:
    """Whether metrics.jsonl already holds the final test metrics (a rerun of a finished run)."""
    return any(row["step"] == step and "test/loss" in row for row in rows)


def summarize(
    rows: list[dict],
    step: int,
    eval_metrics: dict[str, float],
    test_metrics: dict[str, float],
    best_metric: str,
    best_mode: str,
) -> dict[str, Any]:
    """summary.json: last train metrics, final eval/test metrics, best eval value and its step."""
    summary: dict[str, Any] = {"step": step}
    for row in rows:
        summary.update({k: v for k, v in row.items() if k.startswith("train/")})
    summary.update(eval_metrics)
    summary.update(test_metrics)
    points = [(row[best_metric], row["step"]) for row in rows if best_metric and best_metric in row]
    if points:
        value, at = (max if best_mode == "max" else min)(points, key=lambda p: p[0])
        summary.update({f"best/{best_metric}": value, "best/step": at})
    return summary


def plot(run: Run, rows: list[dict], test_sums: dict, directory: Path) -> list[Path]:
    """Learning curves for every logged metric, plus the task's figures of the test pass."""
    figures = [curves.learning_curves(rows, directory / "learning_curves.png")]
    figures.append(curves.gradient_norms(rows, directory / "gradient_norms.png"))
    figures += run.task.plots(test_sums, directory, "test")
    return [f for f in figures if f is not None]


def compute_cost(run: Run) -> dict[str, float]:
    """Parameter count and (under jit) the FLOPs of one train step, loop bodies times their
    trip count (research/flops.py; XLA's cost analysis counts a scan's body once).

    The step is traced on abstract inputs (shapes and shardings only), so nothing is run, no
    batch is drawn from the data iterator, and no executable is compiled.
    """
    cost = {"params/count": float(sum(np.prod(row["shape"]) for row in run.optimizer.table))}
    if run.par.mode != "jit":
        return cost
    state = run.par.abstract_state(run.init_fn, jax.random.PRNGKey(0))
    sample = run.transform(run.sources["train"][0])
    size = run.config.batch_size
    # The dtypes the real step sees: put_batch turns int64/float64 host arrays into 32-bit ones
    # unless x64 is on, and a 64-bit ShapeDtypeStruct warns when it is lowered.
    batch = {
        k: jax.ShapeDtypeStruct(
            (size, *np.shape(v)),
            jax.dtypes.canonicalize_dtype(np.asarray(v).dtype),
            sharding=run.par.batch_sharding,
        )
        for k, v in sample.items()
    }
    cost["compute/flops_per_step"] = flops.count(run.train_step, state, batch)
    return cost
