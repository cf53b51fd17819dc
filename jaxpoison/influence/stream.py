"""Streaming passes over a dataset: fixed-shape, sharded batches and resumable reductions.

Every influence pass (covariance, Lambda, scoring) walks the training set once in
fixed-size batches. The last batch is padded and carries a mask, so a jitted
function sees one shape and compiles once. Batches are split over the mesh's
``"data"`` axis; accumulators are replicated, and ``jit`` adds the cross-device sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.progress import progress_bar
from jaxpoison.sharding import local_rows, replicate, shard_local_batch, to_host
from jaxpoison.training.evaluate import iterate_padded

# Batches a streamed pass may run ahead of the device: outputs wait this long before they are copied
# to the host, and a reduction waits for its accumulator this often. Bounded, so a pass over any
# number of examples holds a few batches at a time, not a queue that grows with the dataset.
FETCH_LAG = 4


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def batches(
    dataset: Dataset, batch_size: int, mesh: jax.sharding.Mesh, start: int = 0, limit: int | None = None
) -> Iterator[tuple[int, jax.Array, jax.Array, jax.Array]]:
    """``(batch_index, images, labels, mask)`` for batches ``start, start+1, …`` on the mesh.

    ``images`` are pixel-space; the last batch is padded with example 0 and masked.
    ``limit`` restricts the pass to the first ``limit`` examples.
    """
    if batch_size % mesh.devices.size:
        raise InputError(f"batch_size {batch_size} is not divisible by the {mesh.devices.size} devices of the mesh.")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows = local_rows(mesh, batch_size)  # with several processes, each reads only its own rows
    for b, (idx, mask) in enumerate(iterate_padded(n, batch_size, start), start):
        idx, mask = idx[rows], mask[rows]
        x, y, m = shard_local_batch(mesh, batch_size, dataset.images[idx], dataset.labels[idx], mask)
        yield b, x, y, m


def reduce_dataset(
    step: Callable[[Any, int, jax.Array, jax.Array, jax.Array], Any],
    init: Any,
    dataset: Dataset,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    *,
    desc: str,
    progress: bool = True,
    limit: int | None = None,
    checkpoint: tuple[Any, int] | None = None,
) -> Any:
    """Fold ``acc = step(acc, batch_index, images, labels, mask)`` over the dataset.

    Args:
      step: a jitted reduction step; ``batch_index`` is a Python int (use it to fold keys).
      init: the initial accumulator pytree.
      checkpoint: ``(manager, every)``: an Orbax manager and a batch interval. The
        accumulator is saved every ``every`` batches; a pass that finds a saved
        accumulator resumes after its batch.

    Returns:
      The final accumulator.
    """
    from jaxpoison.training import checkpoint as ckpt

    acc = replicate(mesh, init)
    start = 0
    if checkpoint is not None:
        manager, every = checkpoint
        found = ckpt.restore_latest(manager, acc)
        if found is not None:
            _, tree, meta = found
            acc, start = replicate(mesh, tree), int(meta["next_batch"])
    n = len(dataset) if limit is None else min(limit, len(dataset))
    total = num_batches(n, batch_size)
    bar = progress_bar(total=total, initial=start, desc=desc, disable=not progress)
    for b, x, y, m in batches(dataset, batch_size, mesh, start, limit):
        acc = step(acc, b, x, y, m)
        if (b + 1) % FETCH_LAG == 0:  # back-pressure: without it the host queues every batch of the pass
            jax.block_until_ready(acc)
        bar.update(1)
        if checkpoint is not None and ((b + 1) % every == 0 or b + 1 == total):
            ckpt.save(manager, b + 1, acc, {"next_batch": b + 1})
    bar.close()
    return acc


def collect_dataset(
    step: Callable[[int, jax.Array, jax.Array, jax.Array], jax.Array],
    dataset: Dataset,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    *,
    desc: str,
    progress: bool = True,
    axis: int = -1,
) -> np.ndarray:
    """Concatenate ``step(batch_index, images, labels, mask)`` outputs along ``axis``, padding removed.

    Each batch's output is copied into one preallocated host array ``FETCH_LAG`` batches after
    it was dispatched, so the device runs ahead of the copies while the pass holds the result
    once plus a few batches, whatever the dataset's size.
    """
    n = len(dataset)
    out: np.ndarray | None = None
    pending: list[tuple[int, jax.Array]] = []

    def fetch_until(left: int) -> None:
        nonlocal out
        while len(pending) > left:
            start, part = pending.pop(0)
            host = np.asarray(to_host(part))
            ax = axis % host.ndim
            if out is None:
                out = np.empty((*host.shape[:ax], n, *host.shape[ax + 1 :]), host.dtype)
            width = min(batch_size, n - start)
            where = (slice(None),) * ax + (slice(start, start + width),)
            out[where] = np.take(host, np.arange(width), axis=ax)  # drops the padding of the last batch

    for b, x, y, m in progress_bar(batches(dataset, batch_size, mesh), total=num_batches(n, batch_size), desc=desc,
                                   disable=not progress):  # fmt: skip
        pending.append((b * batch_size, step(b, x, y, m)))
        fetch_until(FETCH_LAG)
    fetch_until(0)
    return out
