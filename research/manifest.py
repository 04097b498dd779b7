"""The run manifest: what code, packages, hardware and command produced a workdir.

Written as `manifest.json` next to `config.json`, so any result can be traced back to a git commit,
the library versions and the device layout it came from. Also home of the JSON helpers the other
writers of the workdir share (atomic write, numpy/JAX scalars to plain JSON).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from research import storage

UNKNOWN = "unknown"

# Distribution names (as pip knows them) whose versions decide numerical results.
_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "numpy",
    "ml-collections",
    "wandb",
)
# Environment variables that change how JAX compiles or which devices it sees.
_ENV_PREFIXES = ("JAX_", "XLA_", "LIBTPU_", "TPU_")
_ENV_NAMES = ("CUDA_VISIBLE_DEVICES",)


def to_jsonable(obj: Any) -> Any:
    """Converts numpy/JAX scalars and arrays, tuples, sets, paths and ConfigDicts (anything with
    `to_dict`) into plain JSON values."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__") and not isinstance(obj, str | bytes):
        # numpy and JAX arrays: a 0-d one becomes a scalar, others nested lists.
        return np.asarray(obj).tolist()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as pretty JSON (sorted keys) atomically: a reader sees the old or new file.
    `path` may be local or on an object store (gs://)."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    storage.write_text(storage.workdir_path(path), text)


def _git(args: Sequence[str], cwd: pathlib.Path) -> str | None:
    """Output of `git <args>` in `cwd`, or None when git is missing or the command fails."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_info(directory: str | os.PathLike | None = None) -> dict:
    """Commit sha and dirty flag of the checkout holding `directory` (default: this package).

    Both are "unknown" outside a git checkout, without git, or before the first commit. Only
    tracked files count as dirty: untracked outputs (runs/, plots) should not flag every run.
    """
    cwd = pathlib.Path(directory or pathlib.Path(__file__).resolve().parent)
    sha = _git(["rev-parse", "HEAD"], cwd)
    if not sha:
        return {"sha": UNKNOWN, "dirty": UNKNOWN}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"sha": sha, "dirty": UNKNOWN if status is None else bool(status)}


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """Installed version of each distribution, "not installed" for missing ones."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_info() -> dict:
    """JAX backend, device kinds and counts (global and this process), process index/count."""
    return {
        "backend": jax.default_backend(),
        "device_kinds": dict(Counter(d.device_kind for d in jax.devices())),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "local_device_kinds": dict(Counter(d.device_kind for d in jax.local_devices())),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }


def _jax_env() -> dict[str, str]:
    """The JAX/XLA-related environment variables of this process."""
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES
    }


def build_manifest(
    *, mesh_shape: Mapping[str, int], seeds: Mapping[str, int], argv: Sequence[str] | None = None
) -> dict:
    """Everything needed to trace a run back to its code, environment, hardware and command."""
    return {
        "git": git_info(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "devices": device_info(),
        "mesh_shape": {str(k): int(v) for k, v in mesh_shape.items()},
        "env": _jax_env(),
        "seeds": to_jsonable(dict(seeds)),
        "argv": list(sys.argv if argv is None else argv),
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
