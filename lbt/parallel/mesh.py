"""The device mesh (one ``data`` axis over every device) and the shardings the trainer uses."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over all (global) devices, in process-major order.

    Process-major order makes each process's devices a contiguous block of the data axis, so a
    process's contiguous slice of the global microbatch lands on its own devices, and ghost
    groups of consecutive examples span consecutive devices.
    """
    devs = devices if devices is not None else jax.devices()
    devs = sorted(devs, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devs), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the data axis (batches and per-device accumulators)."""
    return NamedSharding(mesh, P(DATA))


def global_batch_array(mesh: Mesh, local: np.ndarray, global_rows: int) -> jax.Array:
    """Assemble each process's contiguous rows into one global array sharded over ``data``."""
    shape = (global_rows,) + tuple(local.shape[1:])
    return jax.make_array_from_process_local_data(data_sharded(mesh), local, shape)


def host_value(x: jax.Array) -> np.ndarray:
    """A replicated (or fully addressable) array as a NumPy value on this host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))


def host_values(tree: Any) -> Any:
    """Every (replicated) array of ``tree`` as NumPy, fetched in one batched transfer."""
    local = jax.tree.map(lambda x: x if x.is_fully_addressable else x.addressable_data(0), tree)
    return jax.device_get(local)


class StepScalars:
    """The step's hyperparameters ``(k, lr, momentum)`` as replicated device arrays, reused while
    they do not change.

    Passing NumPy scalars to ``final`` makes every call transfer three scalars to every device
    (one ``device_put`` each, on the host's critical path). Step schedules (every recipe of Smith
    et al. 2018, Goyal et al.'s steps) keep the values constant for thousands of steps, so the
    last triple is kept on the device and passed again; a changed value (a milestone, a warmup or
    cosine step) sends the three again. Always passing device arrays keeps ``final``'s jit cache
    key fixed, so the step still compiles once.
    """

    def __init__(self, mesh: Mesh):
        self._sharding = replicated(mesh)
        self._key: tuple | None = None
        self._arrays: tuple[jax.Array, ...] = ()

    def __call__(self, k: int, lr: float, momentum: float) -> tuple[jax.Array, ...]:
        host = (np.int32(k), np.float32(lr), np.float32(momentum))
        key = tuple(v.item() for v in host)  # compared at the precision the step receives
        if key != self._key:
            # from per-device buffers: jax.device_put onto a multi-process sharding compiles a
            # broadcast program (two more compilations in a 2-process run); this compiles nothing
            self._arrays = tuple(jax.make_array_from_callback((), self._sharding, lambda _, v=v: v) for v in host)
            self._key = key
        return self._arrays
