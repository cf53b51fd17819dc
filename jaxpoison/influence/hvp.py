"""Hessian-vector and Gauss-Newton-vector products on parameter pytrees.

All products are exact (no finite differences). ``hvp`` is forward-over-reverse,
the cheapest exact Hessian-vector product in JAX; ``gnvp`` multiplies by the
generalised Gauss-Newton matrix ``Jᵀ H_out J``, which is positive semi-definite for
convex losses and is the matrix K-FAC and EK-FAC approximate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax

from jaxpoison.errors import InputError
from jaxpoison.influence.grads import flatten


def hvp(f: Callable, params, v, *args):
    """``∇²f(params) v`` for ``f(params, *args) -> scalar`` (forward-over-reverse).

    Examples:
      For a quadratic ``f(x) = ½ xᵀAx`` the Hessian is ``A``, so the product is ``A v``
      without ever forming ``A`` from ``f``:

      >>> import jax.numpy as jnp
      >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
      >>> f = lambda x: 0.5 * x @ A @ x
      >>> hvp(f, jnp.zeros(2), jnp.array([1.0, 0.0])).tolist()
      [2.0, 1.0]
    """
    return jax.jvp(lambda p: jax.grad(f)(p, *args), (params,), (v,))[1]


def gnvp(apply: Callable, loss_of_outputs: Callable, params, v, x, y):
    """Gauss-Newton-vector product ``Jᵀ ∇²_z L(z) J v`` at ``z = apply(params, x)``.

    Args:
      apply: ``apply(params, x) -> outputs`` (logits).
      loss_of_outputs: ``L(outputs, y) -> scalar``, convex in the outputs.
      params: the point.
      v: the direction (the same pytree structure as ``params``).
      x: the batch's inputs.
      y: the batch's labels.
    """
    z, jv = jax.jvp(lambda p: apply(p, x), (params,), (v,))
    hjv = jax.jvp(lambda o: jax.grad(loss_of_outputs)(o, y), (z,), (jv,))[1]
    _, vjp = jax.vjp(lambda p: apply(p, x), params)
    return vjp(hjv)[0]


def dense_hessian(f: Callable, params, *args) -> jax.Array:
    """The full Hessian ``[D, D]`` of ``f`` over the flattened parameters (tiny models only)."""
    flat, unflatten = flatten(params)
    return jax.hessian(lambda w: f(unflatten(w), *args))(flat)


def dense_gauss_newton(apply: Callable, loss_of_outputs: Callable, params, x, y) -> jax.Array:
    """The full Gauss-Newton matrix ``[D, D]`` (tiny models only)."""
    flat, unflatten = flatten(params)
    jac = jax.jacobian(lambda w: apply(unflatten(w), x).reshape(-1))(flat)  # [N*C, D]
    z = apply(params, x)
    h_out = jax.hessian(lambda o: loss_of_outputs(o.reshape(z.shape), y))(z.reshape(-1))
    return jac.T @ h_out @ jac


def damped(product: Callable, damping: float) -> Callable:
    """``v -> product(v) + damping · v`` on pytrees."""
    return lambda v: jax.tree.map(lambda a, b: a + damping * b, product(v), v)


def check_damping(damping: float) -> None:
    """Refuse a negative, NaN or infinite damping (a traced value cannot be checked and passes)."""
    try:
        value = float(damping)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not (value >= 0.0 and math.isfinite(value)):
        raise InputError(f"damping must be a finite number ≥ 0; got {damping}.")
