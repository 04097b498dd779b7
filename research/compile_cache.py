"""JAX's persistent compilation cache, on by default for runs started by launch/train.py.

Compiling a run's steps takes seconds (about 6 s of the quickstart's wall time on 2 CPU cores);
a later run of the same program on the same machine and JAX version loads them from disk
instead. `RESEARCH_COMPILATION_CACHE` names the directory, or `off` to compile every time; by
default it is `$XDG_CACHE_HOME/research/jax` (`~/.cache/research/jax`), per user. A cache
directory set through JAX's own `JAX_COMPILATION_CACHE_DIR` is left as it is. JAX keys each
entry by the program, the devices and the versions, so a stale entry is never used; the
directory is never pruned (delete it to reclaim the space).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV = "RESEARCH_COMPILATION_CACHE"
# Only compilations that took this long are written: the many sub-second ones (small eval
# helpers) would cost more to store and look up than to redo.
MIN_COMPILE_SECONDS = 0.5


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the cache lives for this environment; None when it is off or JAX's own is set."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    value = environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "none"):
        return None
    if value:
        return Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "research" / "jax"


def enable(
    environ: Mapping[str, str] = os.environ, min_compile_seconds: float = MIN_COMPILE_SECONDS
) -> Path | None:
    """Turns the persistent cache on (call before the first compilation); returns its directory,
    or None when it stays off."""
    import jax  # noqa: PLC0415 (callers import jax only once flags are parsed)

    path = cache_dir(environ)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
