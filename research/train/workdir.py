"""The workdir contract: refuse a workdir holding another run, then write config and manifest.

Checks come first and write nothing, so a refused start leaves the workdir as it was.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from research import config as cfg
from research import rundir, storage
from research.errors import WorkdirError
from research.manifest import write_json
from research.optim import rules


def check_workdir(workdir: epath.Path, config_json: str) -> None:
    """Raise WorkdirError if `workdir` is not a directory or holds a run of another config."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} exists and is not a directory")
    _check_writable(workdir)
    existing = rundir.RunDir(workdir).config
    if not existing.exists():
        return
    try:
        old = cfg.identity(existing.read_text())
    except json.JSONDecodeError:
        raise WorkdirError(
            f"{existing} is not valid JSON; delete the workdir to start over"
        ) from None
    diff = first_difference(old, cfg.identity(config_json))
    if diff:
        raise WorkdirError(
            f"{workdir} holds a run with a different config ({diff}); "
            "use another --workdir, or delete this one to start over"
        )


def _check_writable(workdir: epath.Path) -> None:
    """Refuse a workdir that cannot be written (a read-only mount, another user's directory)
    before anything runs, rather than failing at the first checkpoint. An object store's
    permissions show only when writing: the first write names them there."""
    if storage.is_remote(workdir):
        return
    existing = workdir
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(
            f"cannot write to --workdir {workdir}: {existing} is read-only or not yours; "
            "choose another --workdir"
        )


def write_run_files(
    workdir: epath.Path,
    config_json: str,
    manifest: dict,
    param_table: list[dict],
    vocabulary_json: str | None = None,
    optimizer_overrides: Mapping[str, Any] | None = None,
) -> None:
    """Write config.json, manifest.json, param_rules.txt (the resolved per-parameter table),
    for token data vocab.json (id -> token, to decode predictions) and, when an extension set
    config keys for the optimizer, optimizer_overrides.json ({dotted key: value}: what a
    transfer strategy did beyond config.json), atomically (a kill never leaves half a file).

    manifest.json describes this invocation; `history` keeps when, with which code and on
    which devices every earlier invocation (a resume after preemption, say) ran.
    """
    run = rundir.RunDir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(run.config, json.loads(config_json))
    write_json(run.manifest, {**manifest, "history": _history(run.manifest)})
    storage.write_text(run.param_rules, rules.format_table(param_table) + "\n")
    if optimizer_overrides:
        write_json(run.optimizer_overrides, dict(optimizer_overrides))
    if vocabulary_json is not None:
        storage.write_text(run.vocabulary, vocabulary_json)


def _history(path: epath.Path) -> list[dict]:
    """The earlier invocations recorded in an existing manifest, oldest first."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    keys = ("timestamp_utc", "git", "argv", "parallel")
    return [*old.get("history", []), {k: old.get(k) for k in keys}]


def first_difference(old: dict, new: dict, prefix: str = "") -> str:
    """The first dotted key whose value differs, as `key: old -> new` ('' if identical)."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return ""
