"""Per-example gradients and flat-vector views of parameter pytrees."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxpoison.influence.losses import LogitLoss


def example_loss(apply: Callable, loss: LogitLoss) -> Callable:
    """``f(params, x [...], y []) -> scalar``: the loss of one unbatched example."""
    return lambda params, x, y: loss(apply(params, x[None])[0], y)


def per_example_grads(apply: Callable, loss: LogitLoss, params, x: jax.Array, y: jax.Array):
    """Gradient of ``loss`` for every example of a batch, as a pytree with a leading ``[N]`` axis.

    Uses ``vmap(grad)``: the model must treat examples independently (BatchNorm in
    inference mode, no cross-example layers).
    """
    return jax.vmap(jax.grad(example_loss(apply, loss)), in_axes=(None, 0, 0))(params, x, y)


def flatten(tree) -> tuple[jax.Array, Callable]:
    """``(vector, unflatten)`` for a parameter pytree."""
    return ravel_pytree(tree)


def flatten_batch(tree) -> jax.Array:
    """A pytree with leading axis ``[N]`` as an ``[N, D]`` matrix (leaf order of ``ravel_pytree``)."""
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)


def tree_dot(a, b) -> jax.Array:
    """``<a, b>`` summed over all leaves."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
