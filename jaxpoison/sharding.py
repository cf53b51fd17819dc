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


def shard_batch(mesh: jax.sharding.Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Place host arrays on the mesh, split along their first axis.

    Raises:
      ValueError: the leading size is not divisible by the number of devices.
    """
    n = mesh.devices.size
    for a in arrays:
        if a.shape[0] % n:
            raise InputError(
                f"a batch of {a.shape[0]} examples cannot be split evenly over {n} devices; "
                f"use a batch size divisible by {n}."
            )
    sharding = batch_sharding(mesh)
    return tuple(jax.device_put(a, sharding) for a in arrays)


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
    """Copy a pytree onto every device of the mesh."""
    # Never alias the input: the train step donates its buffers, which must not be the caller's.
    return jax.device_put(tree, replicated(mesh), may_alias=False)
