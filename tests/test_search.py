"""Bayesian search with optuna: suggestions, a persistent study, resumed trials, the CLI."""

import json
import math
from pathlib import Path

import optuna
import pytest
from test_sweep import TINY_CONFIG, _launch

from research import search
from research.errors import ConfigError

SPACE = {
    "optimizer.learning_rate": ("float", 1e-4, 1e-1, "log"),
    "model.width": ("int", 2, 8),
    "optimizer.name": ("categorical", ["sgd", "adam"]),
}


def test_suggestions_follow_the_space():
    trial = optuna.trial.FixedTrial(
        {"optimizer.learning_rate": 0.01, "model.width": 4, "optimizer.name": "adam"}
    )
    assert search.suggest(trial, SPACE) == {
        "optimizer.learning_rate": 0.01,
        "model.width": 4,
        "optimizer.name": "adam",
    }


def test_bad_space_is_a_config_error(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("def get_search_space(arg=None):\n    return {'a': ('gaussian', 0, 1)}\n")
    with pytest.raises(ConfigError, match="must start with one of"):
        search.load_search_space(path, None)
    path.write_text("def get_config(arg=None):\n    return None\n")
    with pytest.raises(ConfigError, match="get_search_space"):
        search.load_search_space(path, None)


def _fake_launch(log):
    """Writes the summary a run would, with accuracy peaking at learning rate 0.01."""

    def launch(run):
        log.append(run.name)
        Path(run.workdir).mkdir(parents=True, exist_ok=True)
        lr = run.overrides["optimizer.learning_rate"]
        accuracy = 1.0 - abs(math.log10(lr) + 2.0) / 10
        (Path(run.workdir) / "summary.json").write_text(json.dumps({"eval/accuracy": accuracy}))
        return "done"

    return launch


def test_study_persists_and_resumes_a_killed_trial(tmp_path):
    space = {"optimizer.learning_rate": ("float", 1e-4, 1e-1, "log")}
    kwargs = {"objective": "eval/accuracy", "direction": "maximize", "seed": 0}
    log = []
    study = search.run_study(tmp_path, space, trials=4, launch=_fake_launch(log), **kwargs)
    assert len(log) == 4 and len(study.trials) == 4
    # A search killed mid-trial leaves it RUNNING; the next invocation resumes that trial.
    killed = study.ask()
    killed.suggest_float("optimizer.learning_rate", 1e-4, 1e-1, log=True)
    study = search.run_study(tmp_path, space, trials=6, launch=_fake_launch(log), **kwargs)
    assert len(log) == 6
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6 and len(states) == 6
    assert study.trials[killed.number].state == optuna.trial.TrialState.COMPLETE
    assert study.best_value == max(t.value for t in study.trials)


@pytest.mark.slow
def test_optuna_search_from_the_command_line(tmp_path):
    config = tmp_path / "tiny.py"
    space = "\n\ndef get_search_space(arg=None):\n"
    space += "    return {'optimizer.learning_rate': ('float', 1e-3, 1e-1, 'log')}\n"
    config.write_text(TINY_CONFIG + space)
    args = (f"--config={config}", f"--workdir={tmp_path}/search", "--search=optuna")
    out = _launch(*args, "--trials=2", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summaries = list((tmp_path / "search").glob("*/summary.json"))
    assert len(summaries) == 2 and "best trial" in out.stdout
    assert (tmp_path / "search" / "optuna.db").is_file()
