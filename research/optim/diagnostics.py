"""Gradient diagnostics computed inside the train step: vanishing/exploding gradients made visible.

- `grad_norm/<module>`: the gradient norm of each module (a parameter path without its leaf
  name, e.g. `stage1/block2/conv`), so norms can be followed layer by layer over training;
- `update_ratio/<group>`: ||update|| / ||params|| per rule group (about 1e-3 is healthy for
  SGD-like training; much larger means a too-high learning rate, ~0 a frozen or dead group);
- `dead_relu/<name>`: the fraction of units of each post-ReLU intermediate in the model's `aux`
  that are exactly zero for every example of the batch.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from research.optim.rules import key_path_str


def _squares_by(tree: Any, name_of: Mapping[str, str]) -> dict[str, jax.Array]:
    """Sum of squares of the leaves of `tree`, grouped by `name_of[path]`."""
    sums: dict[str, jax.Array] = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = name_of[key_path_str(key_path)]
        sums[name] = sums.get(name, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return sums


def gradient_diagnostics(
    grads: Any, updates: Any, params: Any, table: Sequence[Mapping[str, Any]]
) -> dict[str, jax.Array]:
    """Per-module gradient norms and per-group update/parameter ratios."""
    module_of = {row["path"]: row["path"].rsplit("/", 1)[0] for row in table}
    group_of = {row["path"]: row["group"] for row in table}
    out = {f"grad_norm/{m}": jnp.sqrt(s) for m, s in _squares_by(grads, module_of).items()}
    update_sq, param_sq = _squares_by(updates, group_of), _squares_by(params, group_of)
    for group, sq in update_sq.items():
        out[f"update_ratio/{group}"] = jnp.sqrt(sq) / (jnp.sqrt(param_sq[group]) + 1e-12)
    return out


def dead_units(aux: Mapping[str, Any], axis_name: str | None = None) -> dict[str, jax.Array]:
    """For each batched intermediate in `aux`: the fraction of units (last axis) that are zero
    on every example (under pmap: on every example of every device)."""
    out = {}
    for name, x in aux.items():
        if not hasattr(x, "ndim") or x.ndim < 2:
            continue
        dead = jnp.all(x.reshape(-1, x.shape[-1]) == 0, axis=0).astype(jnp.float32)
        if axis_name is not None:
            dead = jax.lax.pmin(dead, axis_name)
        out[f"dead_relu/{name}"] = jnp.mean(dead)
    return out
