"""Data parallelism over every device of every process: one Mesh, two drivers (jit and pmap).

Both drivers keep the same global view outside the step: the state is a tree of replicated
global arrays (what checkpoints hold) and each process contributes its slice of every batch.
`jit` runs the step on global arrays sharded with NamedSharding over the mesh's `data` axis;
`pmap` runs it per device with explicit `pmean`/`psum` over the axis `data`; each process feeds
its local devices, and the axis (so every collective) spans all devices of all processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.errors import ConfigError

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Parallel:
    """The mesh plus the driver-specific ways to place state and batches and compile steps."""

    mode: str
    mesh: Mesh

    @classmethod
    def create(cls, mode: str = "jit", num_devices: int | None = None) -> Parallel:
        """A 1-D `data` mesh over all devices (or the first `num_devices`, single-process only)."""
        devices = jax.devices()
        if num_devices is not None:
            if jax.process_count() > 1 or not 0 < num_devices <= len(devices):
                raise ConfigError(
                    f"parallel.num_devices={num_devices} must be in 1..{len(devices)} "
                    "and is only allowed with a single process"
                )
            devices = devices[:num_devices]
        return cls(mode=mode, mesh=Mesh(np.asarray(devices), (DATA_AXIS,)))

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
        """The leading (example) axis is split over the `data` axis."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

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
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes
        )

    def init_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        """The initial state as replicated global arrays (created directly on the devices)."""
        return jax.jit(init_fn, out_shardings=self.replicated)(rng)

    def to_device(self, state: Any) -> Any:
        """Global replicated state -> what the compiled step takes."""
        if self.mode == "jit":
            return state
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

    def compile_train_step(self, step_fn: Callable) -> Callable:
        """`(state, batch) -> (state, metrics)`, compiled once; the input state is donated."""
        if self.mode == "jit":
            return jax.jit(
                step_fn,
                out_shardings=(self.replicated, self.replicated),
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
        """Fetch replicated step outputs (metrics, eval sums) as NumPy values."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

    def describe(self) -> dict[str, Any]:
        """Facts for the manifest."""
        return {
            "mode": self.mode,
            "mesh": dict(self.mesh.shape),
            "devices": self.num_devices,
            "local_devices": len(self.local_devices),
            "processes": jax.process_count(),
        }
