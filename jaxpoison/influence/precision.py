"""The dtype policy of the influence passes: which dtype the big contractions run in.

Covariance sums, Lambda sums and score contractions may run in ``"bfloat16"`` (or
``"float32"``) while every product accumulates in float32; ``None`` leaves the model's own
dtype untouched (float64 in the exactness tests). Eigendecompositions are float64 always.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpoison.errors import InputError

COMPUTE_DTYPES = (None, "float32", "bfloat16")


def check_dtype(dtype: str | None, where: str) -> None:
    """Refuse a compute dtype the passes do not support, naming the field."""
    if dtype not in COMPUTE_DTYPES:
        raise InputError(f"{where} must be one of {COMPUTE_DTYPES}; got {dtype!r}.")


def einsum(spec: str, *operands: jax.Array, dtype: str | None) -> jax.Array:
    """``jnp.einsum`` with its operands cast to ``dtype`` and float32 accumulation (``None``: as they are)."""
    if dtype is None:
        return jnp.einsum(spec, *operands)
    return jnp.einsum(spec, *(x.astype(dtype) for x in operands), preferred_element_type=jnp.float32)
