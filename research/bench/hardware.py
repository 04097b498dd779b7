"""What the machine can do: its name and a measured float32 matmul peak (FLOP/s)."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp


def describe() -> str:
    """The device JAX runs on, with the host's CPU and core count (named in every table)."""
    device = jax.devices()[0]
    cpu = _cpu_model() or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = device.device_kind if device.platform != "cpu" else f"CPU ({cpu}, {cores} cores)"
    return f"{name}, {len(jax.devices())} device(s), jax {jax.__version__}"


def _cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def matmul_peak(size: int = 1024, repeats: int = 10, dtype: str = "float32") -> float:
    """Best FLOP/s of a jitted size x size matmul on the default device: the yardstick that
    achieved FLOP/s are reported against (a machine-specific measured peak, not a datasheet's)."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
