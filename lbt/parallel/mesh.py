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
