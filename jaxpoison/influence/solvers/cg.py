"""Conjugate gradient on parameter pytrees, matrix-free.

Solves ``(A + damping·I) x = b`` for a symmetric positive-definite ``A`` given only
``matvec(v) = A v`` (an HVP or GNVP). Pure ``lax.while_loop``: jittable, with the
number of iterations and the final residual returned for diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpoison.influence.grads import tree_dot
from jaxpoison.influence.hvp import check_damping


class CGInfo(NamedTuple):
    iterations: jax.Array
    residual_norm: jax.Array
    converged: jax.Array


def _axpy(a, x, y):
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


def conjugate_gradient(
    matvec: Callable, b, *, damping: float = 0.0, tol: float = 1e-6, max_iterations: int = 1000, x0=None
):
    """``x ≈ (A + damping·I)⁻¹ b`` by conjugate gradient.

    Args:
      matvec: ``v -> A v`` on pytrees shaped like ``b``; ``A`` must be symmetric PSD
        (add damping when it is only semi-definite).
      b: right-hand side pytree.
      damping: added to the diagonal.
      tol: stop when ``‖r‖ ≤ tol · ‖b‖``.
      max_iterations: iteration cap.
      x0: starting point (default zeros).

    Returns:
      ``(x, CGInfo)``.
    """
    check_damping(damping)
    op = lambda v: _axpy(damping, v, matvec(v))
    x = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
    r = jax.tree.map(jnp.subtract, b, op(x))
    p = r
    rs = tree_dot(r, r)
    threshold = (tol**2) * tree_dot(b, b)

    def cond(carry):
        _, _, _, rs, k = carry
        return (rs > threshold) & (k < max_iterations)

    def body(carry):
        x, r, p, rs, k = carry
        ap = op(p)
        alpha = rs / tree_dot(p, ap)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rs_new = tree_dot(r, r)
        p = _axpy(rs_new / rs, p, r)
        return x, r, p, rs_new, k + 1

    x, _, _, rs, k = jax.lax.while_loop(cond, body, (x, r, p, rs, jnp.asarray(0)))
    return x, CGInfo(iterations=k, residual_norm=jnp.sqrt(rs), converged=rs <= threshold)
