"""Data-parallel sharding helpers shared by every layer.

jaxpoison shards one axis, the example axis, over a 1-D device mesh named
``"data"``; parameters, optimiser state and curvature factors are replicated. The
global-view ``jax.jit`` then inserts the cross-device reductions (mean losses,
BatchNorm statistics, covariance sums), so a sharded run computes the same
numbers as a single-device run up to floating-point summation order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxpoison.errors import InputError

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all), axis ``"data"``."""
    available = jax.device_count()
    n = available if num_devices is None else num_devices
    if not 1 <= n <= available:
        raise InputError(
            f"asked for {n} devices but {available} are available. On CPU, simulate more with "
            "jax.config.update('jax_num_cpu_devices', N) before any other JAX call."
        )
    # Auto axes: the compiler places reductions; arrays carry NamedShardings explicitly.
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Split the leading (example) axis across the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def _check_divisible(mesh: jax.sharding.Mesh, size: int) -> None:
    n = mesh.devices.size
    if size % n:
        raise InputError(f"a batch of {size} examples cannot be split evenly over {n} devices; "
                         f"use a batch size divisible by {n}.")  # fmt: skip


def local_rows(mesh: jax.sharding.Mesh, size: int) -> slice:
    """The rows of a ``size``-example batch that this process's devices hold (one block, in mesh order).

    With one process, all of them. With several (``jax.distributed``), each process reads and
    places only these rows: :func:`shard_local_batch` assembles the global batch from them.
    """
    _check_divisible(mesh, size)
    per_device = size // mesh.devices.size
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if not mine:
        raise InputError(f"process {jax.process_index()} has no device in the mesh; build the mesh over all devices.")
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise InputError("this process's devices are not contiguous in the mesh; build it with data_mesh().")
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def shard_local_batch(mesh: jax.sharding.Mesh, size: int, *local: np.ndarray) -> tuple[jax.Array, ...]:
    """The global ``size``-example batch from this process's rows (``local_rows``), split over the mesh."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, sharding) for a in local)
    return tuple(jax.make_array_from_process_local_data(sharding, a, (size, *a.shape[1:])) for a in local)


def shard_batch(mesh: jax.sharding.Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Place host arrays on the mesh, split along their first axis (each process places its own rows).

    Raises:
      ValueError: the leading size is not divisible by the number of devices.
    """
    for a in arrays:
        _check_divisible(mesh, a.shape[0])
    rows = local_rows(mesh, arrays[0].shape[0]) if arrays else slice(None)
    return shard_local_batch(mesh, arrays[0].shape[0] if arrays else 0, *(a[rows] for a in arrays))


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
    """Copy a pytree onto every device of the mesh (every process passes the same values)."""
    # Never alias the input: the train step donates its buffers, which must not be the caller's.
    # device_put(may_alias=False) is not enough: placing a one-device array on a larger mesh can
    # reuse its buffer for one of the copies (a donated CF run then deleted the victim's arrays
    # on two devices), so every leaf is copied on the mesh as well.
    if jax.process_count() == 1:
        placed = jax.device_put(tree, replicated(mesh), may_alias=False)
        return jax.tree.map(lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, placed)
    sharding = replicated(mesh)

    def place(leaf):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(jax.make_array_from_callback(data.shape, sharding, lambda i: data[i]),
                                            impl=jax.random.key_impl(leaf))  # fmt: skip
        data = np.asarray(leaf)
        return jax.make_array_from_callback(data.shape, sharding, lambda i: data[i])

    return jax.tree.map(place, tree)


def to_host(tree: Any) -> Any:
    """Fetch a pytree of (possibly sharded, possibly multi-process) arrays to host numpy arrays, whole."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def fetch(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_replicated or leaf.is_fully_addressable:
            return np.asarray(leaf)
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)
