"""Layer-wise learning-rate decay and progressive unfreezing, from parameter names alone.

Depth comes from the indices in a parameter's path (`stage2/block1/...` -> (2, 1), `layer3/...`
-> (3,)), so every model family that follows the naming contract gets it without model code:
input modules (`stem`, `embed`) are at depth 0, indexed modules follow in index order, other
unindexed modules (e.g. a dense layer before the head) come next, and `head` is the deepest.
A parameter at depth d gets the multiplier decay ** (max_depth - d).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from research.optim.rules import key_path_str

INPUT_MODULES = ("stem", "embed", "embedding", "input")
OUTPUT_MODULES = ("head", "classifier", "output")
_INDEX = re.compile(r"[A-Za-z_]+?(\d+)$")


def depths(paths: Iterable[str]) -> dict[str, int]:
    """path -> depth (0 = input side, max = head) for every parameter path."""
    paths = list(paths)
    keys = {p: _depth_key(p) for p in paths}
    indexed = sorted({k for k in keys.values() if isinstance(k, tuple)})
    rank = {k: i + 1 for i, k in enumerate(indexed)}
    # Unindexed, non-input, non-output modules sit between the indexed ones and the head.
    middle = len(indexed) + 1
    output = middle + 1 if "middle" in keys.values() else middle
    out = {}
    for path, key in keys.items():
        if key == "input":
            out[path] = 0
        elif key == "output":
            out[path] = output
        elif key == "middle":
            out[path] = middle
        else:
            out[path] = rank[key]
    return out


def _depth_key(path: str) -> tuple[int, ...] | str:
    top = path.split("/")[0]
    if top in INPUT_MODULES:
        return "input"
    if top in OUTPUT_MODULES:
        return "output"
    indices = tuple(int(m.group(1)) for part in path.split("/")[:-1] if (m := _INDEX.match(part)))
    return indices or "middle"


def layer_multipliers(paths: Iterable[str], decay: float | None) -> dict[str, float]:
    """decay ** (max_depth - depth) per path (all 1.0 when decay is None)."""
    paths = list(paths)
    if decay is None:
        return dict.fromkeys(paths, 1.0)
    d = depths(paths)
    top = max(d.values(), default=0)
    return {p: float(decay) ** (top - d[p]) for p in paths}


def unfreeze_gates(
    groups: Mapping[str, str], schedule: Sequence[tuple[int, str]], step: jnp.ndarray
) -> dict[str, jnp.ndarray]:
    """path -> 1.0 if the path's group trains at `step`, else 0.0 (a pure function of step).

    `schedule` is `((start_step, group), ...)`; groups not in it train from the start.
    """
    start = {group: first for first, group in schedule}
    return {
        path: (step >= start[group]).astype(jnp.float32) if group in start else jnp.float32(1.0)
        for path, group in groups.items()
    }


def keep_frozen_statistics(old: Any, new: Any, trainable: Mapping[str, jnp.ndarray]) -> Any:
    """BatchNorm statistics: the new ones where the module trains, the old ones where frozen.

    A statistic at `a/b/bn/mean` belongs to the module `a/b/bn`, which is frozen when all its
    parameters (`a/b/bn/scale`, `a/b/bn/bias`) are, per `trainable` (path -> 0/1 gate).
    """

    def module_gate(module: str) -> jnp.ndarray:
        gates = [g for p, g in trainable.items() if p.rsplit("/", 1)[0] == module]
        return jnp.max(jnp.stack(gates)) if gates else jnp.float32(1.0)

    def pick(key_path: tuple, o: jnp.ndarray, n: jnp.ndarray) -> jnp.ndarray:
        module = key_path_str(key_path[:-1])
        return jnp.where(module_gate(module) > 0, n, o)

    return jax.tree_util.tree_map_with_path(pick, old, new)
