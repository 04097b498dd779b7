"""Experiment configs: the shared keys, overrides, duration resolution, validation and dumping.

Config files hold only what the user chose. Durations carry their unit in the key name
(`total_steps` / `total_epochs`, `eval_every_steps` / `eval_every_epochs`, ...); `resolve` turns
every `<name>_epochs` into its `<name>_steps` sibling once the dataset size is known, so the code
downstream only ever reads `*_steps`.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import math
import re
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections

# The keys and their defaults live in config_keys; base_config is re-exported as the config API.
from research.config_keys import (  # noqa: F401
    PARALLEL_MODES,
    RUNTIME_KEYS,
    TRANSFER_STRATEGIES,
    base_config,
)
from research.errors import ConfigError


def config_function(path: str | Path, name: str, hint: str = "") -> Any:
    """The function `name` (get_config, get_sweep, get_search_space) of a config file.

    A missing file, a syntax error or a failing import is a ConfigError naming the file (and
    line), not a traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{_nearest_file(path)}")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # noqa: BLE001  (any failure of the user's file is theirs to fix)
        raise ConfigError(describe_config_failure(path, e)) from None
    if not hasattr(module, name):
        raise ConfigError(f"{path} defines no {name}(arg=None){hint}")
    function = getattr(module, name)

    @functools.wraps(function)
    def checked(*args: Any) -> Any:
        try:
            return function(*args)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(describe_config_failure(path, e)) from None

    return checked


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Import a config file and call its `get_config(arg)`; the result is locked.

    `base_config()` is locked, so a misspelled key inside the file fails at its line.
    """
    get_config = config_function(path, "get_config")
    config = get_config(arg) if arg is not None else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    config.lock()
    return config


def describe_config_failure(path: Path, error: BaseException) -> str:
    """One line for an exception raised while a config file ran: `file:line: what`.

    A key that a locked config does not have (a typo) is named with its dotted path as written
    on that line, and with ml_collections' suggestion of the nearest existing key.
    """
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    where = f"{path}:{mine[-1].lineno}" if mine else str(path)
    text = _message(error)
    unknown = re.search(r'Key "(\w+)" does not exist|^\W*\'(\w+)\'', text)
    if isinstance(error, AttributeError | KeyError) and unknown:
        key = unknown.group(1) or unknown.group(2)
        written = re.search(rf"[\w.]*\b{key}\b", mine[-1].line or "") if mine else None
        dotted = written.group(0).split(".", 1)[-1] if written else key
        near = re.search(r'Did you mean "(\w+)"', text)
        parent = dotted[: -len(key)]  # "optimizer." of "optimizer.learning_rat"
        hint = f" (did you mean '{parent}{near.group(1)}'?)" if near else ""
        return f"{where}: unknown config key '{dotted}'{hint}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{where}: {type(error).__name__}: {first}"


def _message(error: BaseException) -> str:
    """An exception's own text; ml_collections wraps a KeyError (whose str() is quoted) in an
    AttributeError."""
    while isinstance(error, AttributeError | KeyError) and error.args:
        inner = error.args[0]
        if not isinstance(inner, BaseException):
            return str(inner)
        error = inner
    return str(error)


def _nearest_file(path: Path) -> str:
    """`; did you mean X?` for a near miss among the config files beside `path`."""
    folder = path.parent if path.parent.is_dir() else None
    if folder is None:
        return ""
    names = [p.name for p in folder.iterdir() if p.suffix == ".py"]
    close = difflib.get_close_matches(path.name, names, n=1)
    return f"; did you mean {folder / close[0]}?" if close else ""


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Set dotted keys (`optimizer.learning_rate`) in place; unknown keys and wrong types fail."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        try:
            for name in parents:
                node = node[name]
            if leaf not in node:
                raise KeyError(leaf)
            node[leaf] = value
        except KeyError:
            raise ConfigError(f"unknown config key '{key}'") from None
        except TypeError as e:
            raise ConfigError(f"config key '{key}': {e}") from None


def _duration_pairs(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple]:
    """Yield (node, dotted base name, base) for every `<base>_epochs`/`<base>_steps` pair."""
    for key in list(config.keys()):
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _duration_pairs(value, f"{prefix}{key}.")
        elif key.endswith("_epochs") and f"{key[: -len('_epochs')]}_steps" in config:
            base = key[: -len("_epochs")]
            yield config, f"{prefix}{base}", base


def resolve(
    config: ml_collections.ConfigDict, *, num_train_examples: int
) -> ml_collections.FrozenConfigDict:
    """Turn every duration into steps (given the dataset size), validate, and freeze."""
    resolved = ml_collections.ConfigDict(config.to_dict(), type_safe=True)
    if resolved.batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {resolved.batch_size}")
    steps_per_epoch = num_train_examples / resolved.batch_size
    for node, dotted, base in _duration_pairs(resolved):
        epochs, steps = node[f"{base}_epochs"], node[f"{base}_steps"]
        if epochs is not None and steps is not None:
            raise ConfigError(f"set only one of '{dotted}_steps' and '{dotted}_epochs'")
        if epochs is not None:
            node[f"{base}_steps"] = _to_steps(epochs, steps_per_epoch, f"{dotted}_epochs")
    if resolved.total_steps is None:
        raise ConfigError("set 'total_steps' or 'total_epochs'")
    if resolved.eval_batch_size is None:
        resolved.eval_batch_size = resolved.batch_size
    validate(resolved)
    return ml_collections.FrozenConfigDict(resolved)


def _to_steps(epochs: Any, steps_per_epoch: float, key: str) -> Any:
    """Epochs -> steps (rounded up); a tuple of epochs (a schedule) becomes a tuple of steps."""
    if isinstance(epochs, tuple | list):
        return tuple(_to_steps(e, steps_per_epoch, key) for e in epochs)
    if epochs < 0:
        raise ConfigError(f"'{key}' must be >= 0, got {epochs}")
    return math.ceil(epochs * steps_per_epoch)


def validate(config: ml_collections.ConfigDict) -> None:
    """Check values that the type system cannot: ranges and choices."""
    _check_choice(config, "parallel.mode", PARALLEL_MODES)
    _check_choice(config, "checkpoint.best_mode", ("min", "max"))
    _check_choice(config, "unfreeze.batch_norm", ("frozen", "update"))
    _check_choice(config, "mixup.method", ("none", "mixup", "cutmix"))
    _check_choice(config, "ewc.mode", ("ewc", "l2sp"))
    _check_choice(config, "ewc.fisher", ("empirical", "sampled"))
    _check_choice(config, "transfer.batch_norm", ("frozen", "update"))
    _check_choice(config, "transfer.strategy", TRANSFER_STRATEGIES)
    _check_choice(config, "data.series.scaler", ("standard", "minmax", "none"))
    _check_choice(config, "data.series.cv", ("expanding", "sliding"))
    if config.data.text.level is not None:
        _check_choice(config, "data.text.level", ("char", "word"))
    if config.data.tbptt and config.parallel.mode != "jit":
        raise ConfigError(
            "data.tbptt carries one state per stream of the global batch: use parallel.mode=jit"
        )
    for key in ("total_steps", "log_every_steps", "eval_batch_size", "checkpoint.keep"):
        if _get(config, key) <= 0:
            raise ConfigError(f"'{key}' must be positive, got {_get(config, key)}")
    for key in ("eval_every_steps", "checkpoint.every_steps", "optimizer.warmup_steps"):
        value = _get(config, key)
        if value is not None and value < 0:
            raise ConfigError(f"'{key}' must be >= 0, got {value}")
    _check_best_checkpoint(config)
    _check_monitoring(config)
    _check_divergence(config.divergence)


def _check_divergence(divergence: ml_collections.ConfigDict) -> None:
    """A factor at or below 1 would stop runs whose loss merely fluctuates."""
    if divergence.loss_factor and divergence.loss_factor <= 1:
        raise ConfigError(
            f"'divergence.loss_factor' must be above 1 (or 0 to check only for NaN/inf), got "
            f"{divergence.loss_factor}"
        )
    if divergence.patience < 1:
        raise ConfigError(f"'divergence.patience' must be >= 1, got {divergence.patience}")


def _check_monitoring(config: ml_collections.ConfigDict) -> None:
    """Early stopping and reduce-on-plateau watch checkpoint.best_metric at every eval."""
    users = []
    if config.early_stopping.patience is not None:
        users.append("early_stopping.patience")
    if config.optimizer.schedule == "plateau":
        users.append("optimizer.schedule='plateau'")
    if users and not (config.checkpoint.best_metric and config.eval_every_steps):
        raise ConfigError(
            f"{' and '.join(users)} need checkpoint.best_metric and eval_every_steps (or "
            "eval_every_epochs) to watch a validation metric"
        )
    every, eval_every = config.checkpoint.every_steps, config.eval_every_steps
    if config.early_stopping.patience is not None and every != eval_every:
        raise ConfigError(
            f"early_stopping needs a checkpoint at every eval to restore the best one: set "
            f"checkpoint.every_steps ({every}) equal to eval_every_steps ({eval_every})"
        )


def _check_best_checkpoint(config: ml_collections.ConfigDict) -> None:
    """Keeping the best checkpoint needs an eval at every checkpoint step."""
    every, eval_every = config.checkpoint.every_steps, config.eval_every_steps
    if config.checkpoint.best_metric and every and (not eval_every or every % eval_every):
        raise ConfigError(
            f"checkpoint.best_metric='{config.checkpoint.best_metric}' needs an eval at every "
            f"checkpoint: make checkpoint.every_steps ({every}) a multiple of eval_every_steps "
            f"({eval_every}), or set checkpoint.best_metric=''"
        )


def check_batch_divides(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The global batch is split evenly over devices; say so before anything is built."""
    for key in ("batch_size", "eval_batch_size"):
        if _get(config, key) % num_devices:
            raise ConfigError(
                f"'{key}'={_get(config, key)} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices}"
            )


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for name in dotted.split("."):
        node = node[name]
    return node


def _check_choice(config: ml_collections.ConfigDict, key: str, choices: tuple[str, ...]) -> None:
    value = _get(config, key)
    if value not in choices:
        raise ConfigError(f"'{key}' must be one of {', '.join(choices)}; got '{value}'")


def to_json(config: ml_collections.ConfigDict | ml_collections.FrozenConfigDict) -> str:
    """The config as stable, sorted JSON (what `config.json` holds)."""
    return json.dumps(_plain(config), indent=2, sort_keys=True)


def from_json(config_json: str) -> ml_collections.ConfigDict:
    """A dumped (resolved) config as a ConfigDict that `resolve` accepts again.

    Lists become tuples again, and each `<name>_epochs` whose `<name>_steps` was derived from
    it is dropped to None (the steps are kept), so resolving does not see both set.
    """

    def restore(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: restore(v) for k, v in node.items()}
            for key in node:
                steps = f"{key[: -len('_epochs')]}_steps"
                if key.endswith("_epochs") and out.get(steps) is not None:
                    out[key] = None
            return out
        if isinstance(node, list):
            return tuple(restore(v) for v in node)
        return node

    return ml_collections.ConfigDict(restore(json.loads(config_json)))


def identity(config_json: str) -> dict:
    """The parts of a dumped config that define the computation (all but RUNTIME_KEYS)."""
    tree = json.loads(config_json)
    for key in RUNTIME_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.get(name, {})
        node.pop(leaf, None)
    return tree


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
