"""Configs: overrides are checked, durations resolve to steps, every config file loads."""

import json
import math
from pathlib import Path

import pytest

from research import config as cfg
from research.errors import ConfigError

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.py"))


def _config(**overrides):
    c = cfg.base_config()
    c.lock()
    cfg.apply_overrides(c, overrides)
    return c


def test_epochs_resolve_to_steps_and_steps_pass_through():
    c = _config(batch_size=64, total_epochs=2.5, eval_every_epochs=1.0)
    resolved = cfg.resolve(c, num_train_examples=1000)
    assert resolved.total_steps == math.ceil(2.5 * 1000 / 64) == 40
    assert resolved.eval_every_steps == math.ceil(1000 / 64)
    assert resolved.eval_batch_size == 64
    assert cfg.resolve(_config(total_steps=7), num_train_examples=10).total_steps == 7


def test_resolved_config_is_frozen():
    resolved = cfg.resolve(_config(total_steps=3), num_train_examples=10)
    with pytest.raises((AttributeError, ValueError)):
        resolved.seed = 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"total_steps": 5, "total_epochs": 1.0}, "only one of 'total_steps' and 'total_epochs'"),
        ({}, "set 'total_steps' or 'total_epochs'"),
        ({"total_steps": 5, "parallel.mode": "pjit"}, "'parallel.mode' must be one of jit, pmap"),
        ({"total_steps": 5, "batch_size": 0}, "batch_size must be positive"),
    ],
)
def test_inconsistent_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cfg.resolve(_config(**overrides), num_train_examples=100)


def test_unknown_key_and_wrong_type_are_config_errors():
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.learning_rat'"):
        _config(**{"optimizer.learning_rat": 0.1})
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        _config(**{"optimizer.learning_rate": "fast"})


def test_batch_must_divide_devices():
    with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
        cfg.check_batch_divides(_config(batch_size=12, eval_batch_size=16), 8)


def test_identity_ignores_runtime_keys_only():
    a = cfg.to_json(_config(total_steps=3))
    b = cfg.to_json(_config(total_steps=3, **{"parallel.num_devices": 1}))
    c = cfg.to_json(_config(total_steps=4))
    assert json.loads(a) != json.loads(b)
    assert cfg.identity(a) == cfg.identity(b)
    assert cfg.identity(a) != cfg.identity(c)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads_and_documents_its_command(path):
    config = cfg.load_config_file(path)
    assert config.is_locked
    module_doc = path.read_text().split('"""')[1]
    assert "launch/train.py" in module_doc and "Expected result" in module_doc
    # Epoch-based cadences must agree after rounding to steps, whatever the dataset size.
    for examples in (1000, 1257):
        cfg.resolve(config, num_train_examples=examples)


def _write(path: Path, body: str) -> Path:
    path.write_text("from research.config import base_config\n\n\n" + body)
    return path


def test_a_misspelled_key_inside_a_config_file_names_file_line_and_nearest_key(tmp_path):
    path = _write(
        tmp_path / "typo.py",
        "def get_config():\n    c = base_config()\n    c.optimizer.learning_rat = 1e-5\n"
        "    return c\n",
    )
    with pytest.raises(ConfigError) as error:
        cfg.load_config_file(path)
    assert str(error.value) == (
        f"{path}:6: unknown config key 'optimizer.learning_rat' "
        "(did you mean 'optimizer.learning_rate'?)"
    )


@pytest.mark.parametrize(
    "body,message",
    [
        ("def get_config(:\n    pass\n", "{path}:4: syntax error"),
        ("import no_such_module\n", "{path}:4: ModuleNotFoundError: No module named"),
        (
            "def get_config():\n    c = base_config()\n    c.total_steps = 'many'\n    return c\n",
            "{path}:6: TypeError: Could not override field 'total_steps'",
        ),
        ("def get_config():\n    return None\n", "{path}: get_config returned NoneType"),
        ("X = 1\n", "{path} defines no get_config"),
    ],
)
def test_broken_config_files_are_one_line_config_errors(tmp_path, body, message):
    path = _write(tmp_path / "broken.py", body)
    with pytest.raises(ConfigError) as error:
        cfg.load_config_file(path)
    assert str(error.value).startswith(message.format(path=path)), str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_config_file_suggests_the_nearest_one():
    missing = Path(__file__).parents[1] / "configs" / "smok.py"
    with pytest.raises(ConfigError, match=r"not found: .*configs/smok.py; did you mean .*smoke.py"):
        cfg.load_config_file(missing)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"divergence.loss_factor": 0.5}, "'divergence.loss_factor' must be above 1"),
        ({"divergence.patience": 0}, "'divergence.patience' must be >= 1"),
    ],
)
def test_divergence_rule_values_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg.resolve(_config(total_steps=5, **overrides), num_train_examples=10)


def test_divergence_rule_is_a_runtime_key():
    plain = cfg.to_json(cfg.resolve(_config(total_steps=5), num_train_examples=10))
    looser = _config(total_steps=5, **{"divergence.loss_factor": 100.0})
    resolved = cfg.resolve(looser, num_train_examples=10)
    assert cfg.identity(plain) == cfg.identity(cfg.to_json(resolved))
