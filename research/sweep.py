"""Sweeps: building lists of config overrides, naming their runs, planning and launching them.

A sweep is a `get_sweep(arg)` in a config file returning a list of override dicts
(`{"optimizer.name": "sgd", "seed": 1}`); the helpers here build such lists (cartesian products,
aligned lists, random search, k folds). Each run of a sweep in DIR trains into DIR/<run_name>,
where the name is a pure function of its overrides, so re-invoking the same sweep finds finished
runs (summary.json) and skips them, and finds interrupted ones (checkpoints/ without a summary)
and resumes them. `launch/sweep.py` parses the flags and calls into this module.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import os
import pathlib
import random
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from research import config as config_lib
from research import manifest, rundir, storage
from research.errors import ConfigError

Overrides = dict[str, Any]

# FINISHED runs are skipped; rerunning an INTERRUPTED one resumes it.
FINISHED, INTERRUPTED, PENDING = rundir.FINISHED, rundir.INTERRUPTED, rundir.PENDING

# Run names longer than this are cut and get a hash suffix (file names are limited to 255 bytes,
# and long names are unreadable in tables anyway).
MAX_NAME_LENGTH = 96
_HASH_CHARS = 8
# Keys are dotted identifiers and values are kept to these characters, which makes a name
# unambiguous: a key ends at the first "-", a value at the first "_". Anything else gets a hash.
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9.+-]+")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9.+-]+")
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# Building sweeps


def _axes(axes: Mapping[str, Sequence] | None, kwargs: Mapping[str, Sequence]) -> dict:
    """Merge a positional mapping with keyword axes; `__` in a keyword stands for a dot."""
    merged = dict(axes or {})
    merged.update({k.replace("__", "."): v for k, v in kwargs.items()})
    for key, values in merged.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ConfigError(f"sweep axis '{key}' must be a list of values, got {values!r}")
    return merged


def product(axes: Mapping[str, Sequence] | None = None, /, **kwargs: Sequence) -> list[Overrides]:
    """Every combination of the axes' values (the last axis varies fastest).

    `product({"optimizer.name": ["sgd", "adam"]}, seed=[0, 1])` gives 4 override dicts.
    """
    merged = _axes(axes, kwargs)
    keys = list(merged)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*merged.values())]


def zip_(axes: Mapping[str, Sequence] | None = None, /, **kwargs: Sequence) -> list[Overrides]:
    """Aligned axes: the i-th run takes the i-th value of every axis (all of the same length)."""
    merged = _axes(axes, kwargs)
    lengths = {key: len(values) for key, values in merged.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zip_ needs axes of equal length, got {lengths}")
    keys = list(merged)
    return [dict(zip(keys, values, strict=True)) for values in zip(*merged.values(), strict=True)]


def _sample(key: str, spec: Any, rng: random.Random) -> Any:
    """One value of a search-space entry: a list of choices or a (low, high, scale) range."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"random_search: '{key}' has no choices")
        # rng.random() is the one draw Python promises to keep reproducible across versions.
        return spec[min(int(rng.random() * len(spec)), len(spec) - 1)]
    if isinstance(spec, tuple) and len(spec) == 3 and spec[2] in ("log", "linear"):
        low, high, scale = spec
        u = rng.random()
        if scale == "log":
            if low <= 0 or high <= 0:
                raise ConfigError(f"random_search: log range of '{key}' needs positive bounds")
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        else:
            value = low + u * (high - low)
        # Integer bounds mean an integer key (batch size, width): round onto the grid.
        both_int = isinstance(low, int) and isinstance(high, int)
        return round(value) if both_int else value
    raise ConfigError(
        f"random_search: '{key}' must be a list of choices or (low, high, 'log'|'linear'), "
        f"got {spec!r}"
    )


def random_search(space: Mapping[str, Any], n: int, seed: int = 0) -> list[Overrides]:
    """`n` independent draws from `space` (key -> list of choices or (low, high, scale)).

    Deterministic for a seed, and independent of the order in which `space` lists its keys.
    Ranges with integer bounds give integers.
    """
    rng = random.Random(seed)
    keys = sorted(space)
    draws = [{key: _sample(key, space[key], rng) for key in keys} for _ in range(n)]
    # Back to the caller's key order, so names and tables read as the space was written.
    return [{key: draw[key] for key in space} for draw in draws]


def kfold(k: int, key: str = "data.fold") -> list[Overrides]:
    """The fold index as a sweep dimension: `[{key: 0}, ..., {key: k - 1}]`.

    Only the overrides; the data pipeline must read `key` to hold out that fold.
    """
    if k < 2:
        raise ConfigError(f"kfold needs k >= 2, got {k}")
    return [{key: fold} for fold in range(k)]


def combine(*sweeps: Sequence[Mapping[str, Any]]) -> list[Overrides]:
    """The product of sweeps: every run of the first merged with every run of the second, ...

    Sweeps must set disjoint keys (a key set twice would make one of them silently win).
    """
    result: list[Overrides] = [{}]
    for sweep in sweeps:
        merged = []
        for left, right in itertools.product(result, sweep):
            clash = set(left) & set(right)
            if clash:
                raise ConfigError(f"combine: keys set by two sweeps: {sorted(clash)}")
            merged.append({**left, **right})
        result = merged
    return result


# ------------------------------------------------------------------------------------------------
# Naming runs and formatting overrides


def _hash(overrides: Mapping[str, Any]) -> str:
    """A short digest of the overrides (keys sorted; the type is part of each value)."""
    canonical = json.dumps(
        sorted((k, type(v).__name__, repr(v)) for k, v in overrides.items()), sort_keys=True
    )
    return hashlib.sha1(canonical.encode()).hexdigest()[:_HASH_CHARS]


def _value_text(value: Any) -> str:
    """A value as it reads in a run name: strings bare, everything else as a Python literal."""
    if isinstance(value, list | tuple):
        return "-".join(_value_text(v) for v in value)
    return value if isinstance(value, str) else repr(value)


def _is_lossless(key: str, value: Any) -> bool:
    """Whether `key-value` alone identifies the pair, so names stay distinct without a hash."""
    if not _SAFE_KEY.fullmatch(key) or isinstance(value, list | tuple):
        return False
    text = _value_text(value)
    if not _SAFE_VALUE.fullmatch(text):
        return False
    if isinstance(value, str):
        # The string "1" or "True" must not share a name with the number 1 or the bool True.
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return True
        return False
    return True


def run_name(overrides: Mapping[str, Any]) -> str:
    """A stable, readable, filesystem-safe name for a run: `optimizer.name-adam_seed-1`.

    Keys are sorted (the order of the dict does not matter). A hash suffix is added when a value
    had to be mangled (spaces, slashes, tuples) or the name is too long, so distinct overrides
    always give distinct names.
    """
    if not overrides:
        return "base"
    items = sorted(overrides.items())
    parts = [f"{key}-{_UNSAFE_CHARS.sub('-', _value_text(value))}" for key, value in items]
    name = "_".join(parts)
    lossless = all(_is_lossless(key, value) for key, value in items)
    if lossless and len(name) <= MAX_NAME_LENGTH:
        return name
    head = name[: MAX_NAME_LENGTH - _HASH_CHARS - 1].rstrip("_-.")
    return f"{head}_{_hash(overrides)}"


def format_override(key: str, value: Any) -> str:
    """`--config.key=value` as `ml_collections.config_flags` parses it back.

    Strings go verbatim (the flag parser takes a str field's text as is); other values as Python
    literals (`1e-05`, `True`, `(256, 128)`); lists become tuples, the type configs store.
    """
    if isinstance(value, list):
        value = tuple(value)
    text = value if isinstance(value, str) else repr(value)
    return f"--config.{key}={text}"


# ------------------------------------------------------------------------------------------------
# Loading a sweep and planning its runs


def parse_config_flag(config: str) -> tuple[pathlib.Path, str | None]:
    """`configs/X.py[:arg]` -> (path, arg), the syntax of train.py's `--config`."""
    path, sep, arg = config.partition(":")
    return pathlib.Path(path), (arg if sep else None)


def load_sweep(config_path: str | os.PathLike, arg: str | None = None) -> list[Overrides]:
    """Call the config file's `get_sweep(arg)`; ConfigError if it has none or returns no dicts."""
    path = pathlib.Path(config_path)
    get_sweep = config_lib.config_function(path, "get_sweep", "; add one to sweep it")
    sweep = get_sweep(arg)
    if not isinstance(sweep, list) or not all(isinstance(o, Mapping) for o in sweep):
        raise ConfigError(f"{path}: get_sweep must return a list of override dicts")
    return [dict(o) for o in sweep]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its name, overrides, workdir and status before launching."""

    name: str
    overrides: Overrides
    workdir: str  # a string, not a Path: gs://bucket/... must keep its double slash
    status: str


def run_status(workdir: str | os.PathLike) -> str:
    """FINISHED if summary.json exists, INTERRUPTED if only checkpoints/ does, else PENDING."""
    return rundir.status(workdir)


def plan(sweep_dir: str | os.PathLike, sweep: Sequence[Mapping[str, Any]]) -> list[PlannedRun]:
    """Name every run, place it under `sweep_dir`, and classify it from what is on disk."""
    sweep_dir = os.fspath(sweep_dir).rstrip("/")
    runs, seen = [], {}
    for overrides in sweep:
        name = run_name(overrides)
        if name in seen:
            raise ConfigError(f"the sweep lists the same run twice: {dict(overrides)}")
        seen[name] = overrides
        workdir = f"{sweep_dir}/{name}"
        runs.append(PlannedRun(name, dict(overrides), workdir, run_status(workdir)))
    return runs


def tracking_overrides(
    base: ml_collections.ConfigDict, sweep_name: str, overrides: Mapping[str, Any]
) -> Overrides:
    """W&B group = the sweep's name, plus a `sweep:<name>` tag, where the config has those keys.

    A run's own override of the group or tags wins: the sweep only fills in what is unset.
    """
    extra: Overrides = {}
    tracking = base.get("tracking")
    if tracking is None:
        return extra
    if "group" in tracking and "tracking.group" not in overrides:
        extra["tracking.group"] = sweep_name
    if "tags" in tracking and "tracking.tags" not in overrides:
        extra["tracking.tags"] = (*tuple(tracking.tags), f"sweep:{sweep_name}")
    return extra


def train_argv(
    config: str,
    run: PlannedRun,
    extra: Mapping[str, Any] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The train.py command line of one run (an argv list, no shell quoting needed)."""
    overrides = {**run.overrides, **(extra or {})}
    return [
        python,
        "launch/train.py",
        f"--config={config}",
        f"--workdir={run.workdir}",
        *(format_override(k, v) for k, v in overrides.items()),
    ]


# ------------------------------------------------------------------------------------------------
# The sweep manifest


def _git_diff(directory: pathlib.Path) -> str | None:
    """`git diff HEAD` of the checkout (tracked files), or None where git cannot say."""
    try:
        result = subprocess.run(
            ["git", "diff", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def build_sweep_manifest(
    *,
    argv: Sequence[str],
    config: str,
    base: ml_collections.ConfigDict,
    runs: Sequence[PlannedRun],
) -> dict:
    """What reproduces the sweep: command, base config, every run's overrides, code and packages."""
    git = manifest.git_info(REPO_ROOT)
    if git["dirty"] is True:
        # A sha alone cannot rebuild uncommitted code; the diff can.
        git["diff"] = _git_diff(REPO_ROOT)
    return {
        "command": list(argv),
        "config": config,
        "base_config": json.loads(config_lib.to_json(base)),
        "overrides": [run.overrides for run in runs],
        "runs": {run.name: run.overrides for run in runs},
        "git": git,
        "packages": manifest.package_versions(),
        "python": sys.version.split()[0],
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_sweep_manifest(sweep_dir: str | os.PathLike, sweep_manifest: dict) -> pathlib.Path:
    """Write DIR/sweep.json; earlier invocations' commands move to its `history`."""
    path = storage.workdir_path(sweep_dir) / "sweep.json"
    history = []
    if path.is_file():
        old = json.loads(path.read_text())
        history = [*old.get("history", []), {k: old.get(k) for k in ("command", "timestamp_utc")}]
    manifest.write_json(path, {**sweep_manifest, "history": history})
    return path


# ------------------------------------------------------------------------------------------------
# Backends
