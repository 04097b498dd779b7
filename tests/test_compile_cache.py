"""The persistent compilation cache (research/compile_cache.py): where it lives, and that a
second process loads what the first compiled."""

import subprocess
import sys
from pathlib import Path

from research import compile_cache

ROOT = Path(__file__).resolve().parents[1]

# A fresh process: cache on (threshold 0, so even this small program is written), one jitted
# step, and the number of persistent-cache hits JAX reports.
PROGRAM = """
import jax, jax.numpy as jnp
from jax import monitoring
from research import compile_cache
hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None
)
print(compile_cache.enable(min_compile_seconds=0))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.arange(64.0).reshape(8, 8)).block_until_ready()
print(len(hits))
"""


def test_cache_dir_defaults_per_user_and_can_be_moved_or_turned_off(tmp_path):
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "research/jax"
    assert compile_cache.cache_dir({}) == Path.home() / ".cache/research/jax"
    assert compile_cache.cache_dir({compile_cache.ENV: str(tmp_path / "c")}) == tmp_path / "c"
    assert compile_cache.cache_dir({compile_cache.ENV: "off"}) is None
    assert compile_cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) is None


def _run(env: dict) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_second_process_loads_the_first_ones_compilation(tmp_path):
    cache = tmp_path / "cache"
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", compile_cache.ENV: str(cache)}
    assert _run(env) == [str(cache), "0"]  # compiled and written
    assert any(cache.iterdir())
    path, hits = _run(env)
    assert path == str(cache) and int(hits) >= 1  # read back (the step, and small helpers)
    off = {**env, compile_cache.ENV: "off"}
    assert _run(off) == ["None", "0"]
