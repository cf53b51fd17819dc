"""Exact inverse-HVPs by a dense solve: the reference every approximation is tested against."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from jaxpoison.errors import InputError
from jaxpoison.influence.grads import flatten
from jaxpoison.influence.hvp import check_damping, dense_hessian


def solve_dense(matrix: jnp.ndarray, v, damping: float = 0.0):
    """``(matrix + damping·I)⁻¹ v`` for a dense ``[D, D]`` matrix and a pytree (or vector) ``v``."""
    check_damping(damping)
    flat, unflatten = flatten(v)
    if matrix.shape != (flat.size, flat.size):
        raise InputError(f"matrix is {matrix.shape} but v has {flat.size} entries.")
    x = jnp.linalg.solve(matrix + damping * jnp.eye(flat.size, dtype=matrix.dtype), flat)
    return unflatten(x)


def exact_ihvp(f: Callable, params, v, *args, damping: float = 0.0):
    """``(∇²f(params) + damping·I)⁻¹ v`` with the full Hessian of ``f(params, *args)``.

    Memory is ``O(D²)``: for tiny models and tests only.
    """
    return solve_dense(dense_hessian(f, params, *args), v, damping)
