"""Where each array of the train state lives on the mesh: replicated, or sharded over `fsdp`.

With `parallel.fsdp` = F > 1 (fully sharded data parallelism), every array of the state
(parameters, optimizer moments, a moving average) is split along its largest axis that F
divides, so each device holds 1/F of it; XLA gathers a parameter where the step needs it whole
and reduce-scatters its gradient. Arrays with no such axis (scalars, odd sizes), the step
counter and the random key stay replicated. `parallel.fsdp_rules` overrides the choice per
array: `(regex, axis)` pairs matched (first match wins) against the array's path in the state,
e.g. `opt_state/0/mu/stage1/block1/conv/kernel`; an axis of -1 keeps the array replicated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from research.errors import ConfigError
from research.optim.rules import key_path_str

FSDP_AXIS = "fsdp"
REPLICATE = -1  # the axis a rule gives to keep an array whole on every device
UNSHARDED_FIELDS = ("step", "rng")  # TrainState fields never split


def shard_axis(shape: Sequence[int], fsdp: int) -> int | None:
    """The axis to split over `fsdp` devices: the largest one `fsdp` divides (the last of
    equal ones, usually the output features), or None."""
    if fsdp <= 1:
        return None
    divisible = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
    return max(divisible)[1] if divisible else None


def state_specs(state: Any, fsdp: int, rules: Sequence[tuple[str, int]] = ()) -> Any:
    """A PartitionSpec for every array of `state` (arrays or ShapeDtypeStructs)."""
    compiled = [(re.compile(pattern), int(axis)) for pattern, axis in rules]

    def spec(key_path: tuple, leaf: Any) -> PartitionSpec:
        path = key_path_str(key_path)
        shape = tuple(np.shape(leaf))
        if fsdp <= 1 or path.split("/")[0] in UNSHARDED_FIELDS:
            return PartitionSpec()
        axis = next((a for p, a in compiled if p.search(path)), None)
        if axis is None:
            axis = shard_axis(shape, fsdp)
        elif axis != REPLICATE:
            _check_rule_axis(path, shape, axis, fsdp)
        if axis is None or axis == REPLICATE:
            return PartitionSpec()
        return PartitionSpec(*([None] * axis), FSDP_AXIS)

    return jax.tree_util.tree_map_with_path(spec, state)


def _check_rule_axis(path: str, shape: tuple[int, ...], axis: int, fsdp: int) -> None:
    if not 0 <= axis < len(shape) or shape[axis] % fsdp:
        raise ConfigError(
            f"parallel.fsdp_rules: {path} has shape {shape}; axis {axis} cannot be split over "
            f"parallel.fsdp={fsdp} devices (give an axis whose size {fsdp} divides, or -1)"
        )


def bytes_per_device(tree: Any) -> int:
    """Bytes of `tree`'s arrays held by one device (the first addressable one)."""
    device = jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        shards = [s for s in leaf.addressable_shards if s.device == device]
        total += sum(s.data.nbytes for s in shards)
    return total
