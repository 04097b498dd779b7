"""Data parallelism over every device of every process: one Mesh, two drivers (jit and pmap).

Both drivers keep the same global view outside the step: the state is a tree of global arrays
(what checkpoints hold) and each process contributes its slice of every batch. `jit` runs the
step on global arrays sharded with NamedSharding over the mesh; `pmap` runs it per device with
explicit `pmean`/`psum` over the axis `data`; each process feeds its local devices, and the axis
(so every collective) spans all devices of all processes.

With `parallel.fsdp` = F > 1 (jit only) the mesh is 2-D, `data` x `fsdp`: batches are split
over both axes and the state's arrays over `fsdp` (research/sharding.py), so each device holds
about 1/F of the parameters and optimizer state. F = 1 is plain data parallelism: a 1-D `data`
mesh and a replicated state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.errors import ConfigError
from research.sharding import FSDP_AXIS, state_specs

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Parallel:
    """The mesh plus the driver-specific ways to place state and batches and compile steps."""

    mode: str
    mesh: Mesh
    fsdp_rules: tuple[tuple[str, int], ...] = ()  # (regex, axis) overrides (research/sharding)

    @classmethod
    def create(
        cls,
        mode: str = "jit",
        num_devices: int | None = None,
        fsdp: int = 1,
        fsdp_rules: Sequence[Sequence[Any]] = (),
    ) -> Parallel:
        """The mesh over all devices (or the first `num_devices`, single-process only): 1-D
        `data`, or `data` x `fsdp` when `fsdp` > 1."""
        devices = jax.devices()
        if num_devices is not None:
            if jax.process_count() > 1 or not 0 < num_devices <= len(devices):
                raise ConfigError(
                    f"parallel.num_devices={num_devices} must be in 1..{len(devices)} "
                    "and is only allowed with a single process"
                )
            devices = devices[:num_devices]
        rules = tuple((str(pattern), int(axis)) for pattern, axis in fsdp_rules)
        if fsdp == 1:
            return cls(mode=mode, mesh=Mesh(np.asarray(devices), (DATA_AXIS,)), fsdp_rules=rules)
        _check_fsdp(mode, fsdp, len(devices))
        grid = np.asarray(devices).reshape(-1, fsdp)  # neighbouring devices share a group
        return cls(mode=mode, mesh=Mesh(grid, (DATA_AXIS, FSDP_AXIS)), fsdp_rules=rules)

    @property
    def fsdp(self) -> int:
        """How many devices share each array of the state (1: every device holds it whole)."""
        return dict(self.mesh.shape).get(FSDP_AXIS, 1)

    @property
    def num_devices(self) -> int:
        """Devices over all processes."""
        return self.mesh.devices.size

    @property
    def local_devices(self) -> list[jax.Device]:
        """This process's devices in mesh order."""
        index = jax.process_index()
        return [d for d in self.mesh.devices.flat if d.process_index == index]

    @property
    def axis_name(self) -> str | None:
        """The collective axis name the step (and BatchNorm) must use, or None under jit."""
        return DATA_AXIS if self.mode == "pmap" else None

    @property
    def replicated(self) -> NamedSharding:
        """Every device holds the whole array (parameters, optimizer state)."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        """The leading (example) axis is split over every device (the `data` and `fsdp` axes)."""
        return NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names))

    def state_sharding(self, state: Any) -> Any:
        """A NamedSharding for every array of `state` (arrays or shapes): replicated, or split
        over `fsdp` (research/sharding.py)."""
        specs = state_specs(state, self.fsdp, self.fsdp_rules)
        return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), specs)

    @property
    def _stacked(self) -> NamedSharding:
        """pmap's layout: a leading axis of size local-device-count, one slice per device.

        pmap takes and returns host-local arrays; this is the layout it expects for them (the
        mesh's local part, in mesh order), so inputs are passed on without a copy.
        """
        return NamedSharding(self.mesh.local_mesh, PartitionSpec(DATA_AXIS))

    @property
    def _pmap_devices(self) -> list[jax.Device]:
        """The devices pmap maps over: the whole mesh, identical on every process.

        pmap's collectives (`pmean`/`psum` of gradients, BatchNorm statistics, eval sums) span
        exactly these devices, so with several processes they must include every process's
        devices or each host would average only its own shard and the hosts would diverge. Each
        process still feeds and receives only its local devices' slices (its part of this list).
        """
        return list(self.mesh.devices.flat)

    # -- state ---------------------------------------------------------------------------------

    def abstract_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        """Shapes, dtypes and target shardings of the state, computed without allocating it."""
        shapes = jax.eval_shape(init_fn, rng)
        return jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            shapes,
            self.state_sharding(shapes),
        )

    def init_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        """The initial state as global arrays, created directly in their shardings."""
        shardings = self.state_sharding(jax.eval_shape(init_fn, rng))
        return jax.jit(init_fn, out_shardings=shardings)(rng)

    def to_device(self, state: Any) -> Any:
        """Global state -> what the compiled step takes (under fsdp: each array in its
        sharding, whichever way it was placed, e.g. loaded source weights)."""
        if self.mode == "jit":
            return state if self.fsdp == 1 else jax.device_put(state, self.state_sharding(state))
        n = len(self.local_devices)

        def replicate(x: jax.Array) -> jax.Array:
            local = np.asarray(x.addressable_data(0))
            return jax.device_put(np.broadcast_to(local, (n, *local.shape)), self._stacked)

        return jax.tree.map(replicate, state)

    def from_device(self, state: Any) -> Any:
        """What the compiled step returns -> global replicated state (for checkpoints)."""
        if self.mode == "jit":
            return state

        def unreplicate(x: jax.Array) -> jax.Array:
            local = np.asarray(x.addressable_shards[0].data)[0]
            return jax.make_array_from_callback(local.shape, self.replicated, lambda i: local[i])

        return jax.tree.map(unreplicate, state)

    def replicate(self, value: Any) -> Any:
        """A host value (e.g. a scalar set between steps) in the layout the step takes for state."""
        return self.to_device(jax.device_put(np.asarray(value), self.replicated))

    # -- batches -------------------------------------------------------------------------------

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's slice of a global batch -> device arrays for the step."""
        if self.mode == "jit":
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x),
                local_batch,
            )
        n = len(self.local_devices)
        return jax.tree.map(
            lambda x: jax.device_put(x.reshape(n, -1, *x.shape[1:]), self._stacked), local_batch
        )

    # -- compiled steps ------------------------------------------------------------------------

    def compile_train_step(self, step_fn: Callable, state_sharding: Any = None) -> Callable:
        """`(state, batch) -> (state, metrics)`, compiled once; the input state is donated.
        `state_sharding`: the state's shardings (`state_sharding(shapes)`; default replicated)."""
        if self.mode == "jit":
            return jax.jit(
                step_fn,
                out_shardings=(state_sharding or self.replicated, self.replicated),
                donate_argnums=(0,),
            )
        return jax.pmap(
            step_fn, axis_name=DATA_AXIS, devices=self._pmap_devices, donate_argnums=(0,)
        )

    def compile_eval_step(self, step_fn: Callable) -> Callable:
        """`(state, batch) -> sums`, compiled once."""
        if self.mode == "jit":
            return jax.jit(step_fn, out_shardings=self.replicated)
        return jax.pmap(step_fn, axis_name=DATA_AXIS, devices=self._pmap_devices)

    def to_host(self, tree: Any) -> Any:
        """Fetch step outputs (metrics, eval sums) or state as whole NumPy arrays."""
        if self.mode == "jit":
            return jax.tree.map(_whole, tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

    def describe(self) -> dict[str, Any]:
        """Facts for the manifest."""
        return {
            "mode": self.mode,
            "mesh": dict(self.mesh.shape),
            "fsdp": self.fsdp,
            "devices": self.num_devices,
            "local_devices": len(self.local_devices),
            "processes": jax.process_count(),
        }


def _whole(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on this host (gathered when it is sharded)."""
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _check_fsdp(mode: str, fsdp: int, devices: int) -> None:
    if mode != "jit":
        raise ConfigError(
            f"parallel.fsdp={fsdp} needs parallel.mode=jit: pmap is data-parallel only (every "
            "device holds the whole state)"
        )
    if fsdp < 1 or devices % fsdp:
        raise ConfigError(f"parallel.fsdp={fsdp} must divide the number of devices ({devices})")
