"""Bayesian hyperparameter search with optuna, run through the same launcher as sweeps.

A config file defines `get_search_space(arg)`: config key -> one of
    ("float", low, high) / ("float", low, high, "log") / ("int", low, high) /
    ("categorical", [choices]).
Each trial's suggestions become overrides; the trial trains into DIR/<run name> with
`launch/train.py` (like any sweep run) and reports the run's `summary.json[objective]`. The study
lives in DIR/optuna.db, so re-invoking the search continues it: finished trials count, a trial
left running by a killed search is resumed in its workdir, and only the missing trials are new.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from research import rundir
from research.config import config_function
from research.errors import ConfigError
from research.sweep import PENDING, PlannedRun, run_name

SPACE_KINDS = ("float", "int", "categorical")


def import_optuna() -> Any:
    """optuna, or a ConfigError saying how to install it (it is an optional dependency)."""
    try:
        import optuna  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ConfigError("--search=optuna needs optuna: pip install -e '.[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def load_search_space(config_path: str | pathlib.Path, arg: str | None) -> dict[str, tuple]:
    """The config file's `get_search_space(arg)`, checked."""
    get_space = config_function(config_path, "get_search_space", " for --search=optuna")
    space = get_space(arg) if arg is not None else get_space()
    for key, dim in space.items():
        if not dim or dim[0] not in SPACE_KINDS:
            raise ConfigError(f"search space '{key}': {dim!r} must start with one of {SPACE_KINDS}")
    return dict(space)


def suggest(trial: Any, space: Mapping[str, tuple]) -> dict[str, Any]:
    """One trial's overrides from the search space."""
    overrides = {}
    for key, (kind, *args) in space.items():
        if kind == "categorical":
            overrides[key] = trial.suggest_categorical(key, list(args[0]))
        elif kind == "int":
            overrides[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
        else:
            log = len(args) > 2 and args[2] == "log"
            overrides[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=log)
    return overrides


def objective_value(workdir: str, objective: str) -> float | None:
    """The finished run's `summary.json[objective]`, or None if it did not finish."""
    path = rundir.RunDir.at(workdir).summary
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if objective not in summary:
        raise ConfigError(f"objective '{objective}' is not in {path}; pick a summary.json key")
    return float(summary[objective])


def run_study(
    sweep_dir: str | pathlib.Path,
    space: Mapping[str, tuple],
    *,
    trials: int,
    objective: str,
    direction: str,
    seed: int,
    launch: Callable[[PlannedRun], str],
) -> Any:
    """Run trials until the study holds `trials` finished ones; `launch(run)` trains one run
    and returns its status word. Returns the optuna study."""
    optuna = import_optuna()
    sweep_dir = pathlib.Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="search",
        storage=f"sqlite:///{sweep_dir / 'optuna.db'}",
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:  # left running by a killed search: resume it in its workdir
        _finish(study, frozen.number, frozen.params, sweep_dir, objective, launch)
    while _completed(study, optuna) < trials:
        trial = study.ask()
        _finish(study, trial.number, suggest(trial, space), sweep_dir, objective, launch)
    return study


def _completed(study: Any, optuna: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _finish(study, number: int, overrides, sweep_dir, objective, launch) -> None:
    """Train the trial's run and tell the study its objective (or that it failed)."""
    name = run_name(overrides)
    run = PlannedRun(name, dict(overrides), str(sweep_dir / name), PENDING)
    status = launch(run)
    value = objective_value(run.workdir, objective)
    if value is None:
        study.tell(number, state=_failed(), skip_if_finished=True)
        print(f"trial {number}: {name} {status}, no summary: marked failed")
        return
    study.tell(number, value, skip_if_finished=True)
    print(f"trial {number}: {name} {objective}={value:.4f}")


def _failed() -> Any:
    return import_optuna().trial.TrialState.FAIL
