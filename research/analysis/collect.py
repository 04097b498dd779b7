"""Collect finished runs from a directory tree and group them by what the sweep varied.

A run is any directory holding both `config.json` and `summary.json` (at any depth), so a sweep
laid out as `DIR/width=64/seed=1/` and one laid out flat are read the same way. Runs are grouped
by their swept keys: the config keys whose values differ between runs, minus `seed` (seeds are
what we average over) and the runtime keys that do not change the computation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from research import config as config_lib
from research import rundir, storage, tracking
from research.errors import WorkdirError

CONFIG_FILE = rundir.CONFIG
REPORT_DIR = "report"
_NO_RUNS_INSIDE = (*rundir.RUN_SUBDIRECTORIES, REPORT_DIR)
# Keys that never define a group: seeds and cross-validation folds are averaged over; the rest
# say how a run executed.
EXCLUDED_KEYS = ("seed", "data.subset_seed", "data.fold") + config_lib.RUNTIME_KEYS
# Curves plotted by default when present: the ones people look at first.
DEFAULT_CURVES = ("eval/accuracy", "eval/loss", "train/loss", "train/accuracy")


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """One finished run: its workdir, flattened config, summary and metric records."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as one level of dotted keys (`model.width`), the form overrides use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every directory under `root` (itself included) with config.json and summary.json, sorted."""
    root = storage.workdir_path(root)
    found = {
        path.parent for path in _config_files(root) if rundir.RunDir(path.parent).summary.is_file()
    }
    # Our own output directory never holds runs; skipping it keeps reruns of the report stable.
    return sorted(p for p in found if REPORT_DIR not in p.relative_to(root).parts)


def _config_files(root: epath.Path) -> Iterator[epath.Path]:
    """Every config.json under `root`. An object store refuses recursive globs: there the
    directories are listed level by level, skipping those that never hold runs."""
    if not storage.is_remote(root):  # epath refuses `**` even on disks
        yield from (epath.Path(p) for p in Path(root).rglob(CONFIG_FILE))
        return
    pending = [root]
    while pending:
        directory = pending.pop()
        for path in directory.iterdir():
            if path.name == CONFIG_FILE:
                yield path
            elif path.name not in _NO_RUNS_INSIDE and path.is_dir():
                pending.append(path)


def load_run(path: str | os.PathLike) -> FinishedRun:
    """Reads one run's config, summary and metrics; a file that is not JSON is a WorkdirError."""
    run = rundir.RunDir.at(path)
    try:
        config = json.loads(run.config.read_text())
        summary = json.loads(run.summary.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{run.root}: cannot read run files: {e}") from None
    return FinishedRun(run.root, flatten(config), summary, tracking.read_metrics(run.root))


def collect(root: str | os.PathLike) -> list[FinishedRun]:
    """All runs under `root`; a directory without any is a user error (wrong path, unfinished)."""
    root = storage.workdir_path(root)
    if not root.is_dir():
        raise WorkdirError(f"{root}: no such directory")
    paths = find_runs(root)
    if not paths:
        raise WorkdirError(
            f"{root}: no runs found (a run is a directory with {CONFIG_FILE} and "
            f"{tracking.SUMMARY_FILE}; is the sweep finished?)"
        )
    return [load_run(p) for p in paths]


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in EXCLUDED_KEYS)


def _hashable(value: Any) -> str:
    # Lists (tuples in the config) are not hashable; their JSON text compares the same way.
    return json.dumps(value, sort_keys=True)


def swept_keys(runs: Sequence[FinishedRun]) -> list[str]:
    """Config keys whose values differ between runs (a key missing in some runs counts as
    differing), excluding seeds, folds, runtime keys and step counts derived from epochs; sorted
    so tables have a stable column order."""
    keys = set().union(*(run.config for run in runs))
    swept = []
    for key in sorted(keys):
        values = {_hashable(run.config.get(key)) for run in runs}
        if len(values) > 1 and not _excluded(key) and not _derived(key, runs):
            swept.append(key)
    return swept


def _derived(key: str, runs: Sequence[FinishedRun]) -> bool:
    """A `<name>_steps` that every run derived from its `<name>_epochs` (it differs because the
    training sets differ, e.g. across folds, not because it was swept)."""
    if not key.endswith("_steps"):
        return False
    epochs = key.removesuffix("_steps") + "_epochs"
    return all(run.config.get(epochs) is not None for run in runs)


def group_runs(runs: Iterable[FinishedRun], keys: Sequence[str]) -> dict[tuple, list[FinishedRun]]:
    """Runs grouped by their values of `keys`, groups in sorted order of those values."""
    groups: dict[tuple, list[FinishedRun]] = defaultdict(list)
    for run in runs:
        groups[tuple(_freeze(run.config.get(k)) for k in keys)].append(run)
    try:  # numbers and tuples of numbers sort by value (width 4 before 16)
        return dict(sorted(groups.items(), key=lambda item: item[0]))
    except TypeError:  # mixed types (e.g. None and a number): fall back to their JSON text
        return dict(sorted(groups.items(), key=lambda item: _hashable(item[0])))


def _freeze(value: Any) -> Any:
    """Lists (tuples in a config) as tuples, so they can key a group and print as tuples."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def is_number(value: Any) -> bool:
    """A finite-or-not real scalar (bools are flags, not metrics)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_metrics(runs: Iterable[FinishedRun]) -> list[str]:
    """Summary keys `<split>/<name>` holding a number in some run; step counters left out."""
    names = {
        key
        for run in runs
        for key, value in run.summary.items()
        if "/" in key and is_number(value) and not key.endswith("/step")
    }
    return sorted(names)


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """`model.width=64, lr=0.1` (or `all runs` when nothing was swept), for legends."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all runs"


def mean_curve(runs: Iterable[FinishedRun], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the mean over runs (seeds) of `metric` at each step any run logged it."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for record in run.metrics:
            value = record.get(metric)
            if is_number(value) and "step" in record and math.isfinite(value):
                by_step[int(record["step"])].append(float(value))
    steps = sorted(by_step)
    return np.asarray(steps), np.asarray([np.mean(by_step[s]) for s in steps])


def curve_metrics(runs: Sequence[FinishedRun], wanted: Sequence[str] = DEFAULT_CURVES) -> list[str]:
    """The metrics in `wanted` that at least one run logged in metrics.jsonl."""
    logged = {key for run in runs for record in run.metrics for key in record}
    return [m for m in wanted if m in logged]


def convergence(run: FinishedRun, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, values of `metric` and the wall time of each (NaN where a record has none).

    The wall time is `<split>/wall_time` in the same record: seconds of training, summed over
    resumes, when the value was logged.
    """
    clock = f"{metric.split('/', 1)[0]}/wall_time"
    points = [
        (int(r["step"]), float(r[metric]), float(r.get(clock, math.nan)))
        for r in run.metrics
        if is_number(r.get(metric)) and "step" in r
    ]
    steps, values, times = zip(*points, strict=True) if points else ((), (), ())
    return np.asarray(steps), np.asarray(values), np.asarray(times)


# Metric names (the part after the split) where lower is better: a target is reached from above.
LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "mape", "perplexity", "bits_per_token")


def lower_is_better(metric: str) -> bool:
    """Whether `metric` (e.g. eval/mse) improves downwards."""
    return metric.rpartition("/")[2] in LOWER_IS_BETTER


def steps_to(run: FinishedRun, metric: str, target: float) -> float:
    """The first logged step at which `metric` reached `target` (NaN if it never did): at or
    above it for accuracies, at or below it for losses and errors (`lower_is_better`)."""
    steps, values, _ = convergence(run, metric)
    hit = values <= target if lower_is_better(metric) else values >= target
    reached = np.flatnonzero(hit)
    return float(steps[reached[0]]) if reached.size else math.nan


def add_steps_to(runs: Iterable[FinishedRun], metric: str, target: float) -> list[str]:
    """Adds `steps_to_<target>` (runs that never reach it report nothing, so the table's mean
    is over those that did) and `reached_<target>` (0/1) to each run's summary; their names."""
    names = [f"steps_to_{target:g}", f"reached_{target:g}"]
    for run in runs:
        step = steps_to(run, metric, target)
        if not math.isnan(step):
            run.summary[names[0]] = step
        run.summary[names[1]] = float(not math.isnan(step))
    return names
