"""The end of a run: the test pass, summary.json and the figures (the final checkpoint is saved
already, so a kill here loses nothing a rerun cannot redo)."""

from __future__ import annotations

from typing import Any

import jax

from research import rundir
from research.train import evaluation
from research.train.extension import RunEnd
from research.train.session import Session


def finish(session: Session, state: Any, eval_metrics: dict) -> dict:
    """Evaluate the final state on the test split; write summary.json and the plots; return
    the summary."""
    run, step, tracker = session.run, session.run.total_steps, session.tracker
    is_main = jax.process_index() == 0
    task = session.eval_task(step)
    test_metrics, test_sums = evaluation.evaluate(run, state, "test", task_id=task)
    # Only process 0 writes metrics.jsonl, so only it reads the file back (other hosts may not
    # share the filesystem, or may read it mid-write); their summary lacks the logged history.
    if not (is_main and evaluation.has_final_metrics(tracker.history(), step)):
        final = {**eval_metrics, **test_metrics, "eval/wall_time": session.wall_time()}
        tracker.log(step, final)  # once: a rerun logs nothing new
    rows = tracker.history()
    summary = _summary(session, state, rows, eval_metrics, test_metrics, test_sums)
    figures, plots_dir = [], rundir.RunDir(session.workdir).plots
    for feature in session.features if is_main else ():  # per-family figures and entries
        written, extra = feature.finish(RunEnd(run, state, plots_dir, test_sums, rows))
        figures += written
        summary.update(extra)
    tracker.write_summary(summary)
    if run.config.tracking.plots and is_main:
        plots = evaluation.plot(run, rows, test_sums, plots_dir)
        tracker.log_images(plots + figures)
    return summary


def _summary(
    session: Session,
    state: Any,
    rows: list[dict],
    eval_metrics: dict,
    test_metrics: dict,
    test_sums: dict,
) -> dict[str, Any]:
    """summary.json's entries computed on every process: final and best metrics, the task's
    results, the compute cost, the features' entries and why training stopped early."""
    run, c = session.run, session.run.config.checkpoint
    summary = evaluation.summarize(
        rows, run.total_steps, eval_metrics, test_metrics, c.best_metric, c.best_mode
    )
    summary.update({f"test/{k}": v for k, v in run.task.summary(test_sums).items()})
    summary.update(evaluation.compute_cost(run))
    for feature in session.features:  # e.g. retention of a transfer, continual accuracy matrices
        summary.update(feature.summary(run, state, rows))
    if session.monitor.stopped:
        summary["early_stopping/reason"] = session.monitor.stopped
        summary["early_stopping/final_step"] = int(run.par.to_host(state.step))
    return summary
