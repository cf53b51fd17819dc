"""Small building blocks shared by the models."""

from __future__ import annotations

import jax


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pooling with stride 2 (VALID: an odd last row/column is dropped).

    Written as a reshape and a max instead of ``reduce_window``: same values, but
    its gradient is several times faster on CPU than the select-and-scatter of
    ``nnx.max_pool`` (6 ms vs 39 ms for a 128×28×28×32 batch).
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
