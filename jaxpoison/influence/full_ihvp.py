"""Inverse Hessian-vector products over a whole training set, for the full parameter vector.

The path that needs no Kronecker factors: the gradient of a mean loss on a dataset (the
query, e.g. IFS's attack-success loss), ``s ≈ (C + λI)⁻¹ v`` by LiSSA with ``C`` the Hessian
or Gauss–Newton matrix of the mean cross-entropy over the training set, a power-iteration
estimate of ``C``'s top eigenvalue that picks a scale the recursion converges under, the
residual that says how well ``s`` solves the system, and ``∇ℓ(z)ᵀ s`` for every example of a
dataset. :func:`jaxpoison.selection.ifs_selection` is built on it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.influence.grads import tree_dot
from jaxpoison.influence.hvp import gnvp, hvp
from jaxpoison.influence.losses import batch_loss, cross_entropy
from jaxpoison.influence.solvers import LissaConfig, LissaInfo, lissa, relative_residual
from jaxpoison.models import FunctionalModel
from jaxpoison.progress import progress_bar
from jaxpoison.training.evaluate import iterate_padded

CURVATURES = ("hessian", "gauss_newton")
RESIDUAL_BATCHES = 8  # minibatches of lissa.batch_size on which the reported residual is estimated



@jax.jit
def _loss_grad_batch(model, x, y, valid):
    def total(p):
        losses = cross_entropy(model.replace(params=p)(x), y)
        return jnp.sum(jnp.where(valid, losses, 0.0))

    return jax.grad(total)(model.params)


def mean_loss_gradient(model: FunctionalModel, dataset: Dataset, batch_size: int = 256):
    """``∇θ`` of the mean cross-entropy of ``model`` on ``dataset`` (pixel space; its labels).

    With a triggered validation set labelled with the target this is ``∇θ L_asr``.
    """
    if len(dataset) == 0:
        raise InputError("the dataset for the loss gradient is empty.")
    batch_size = min(batch_size, len(dataset))
    total = None
    for idx, valid in iterate_padded(len(dataset), batch_size):
        g = _loss_grad_batch(model, dataset.images[idx], dataset.labels[idx], valid)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return jax.tree.map(lambda a: a / len(dataset), total)


def _curvature_product(model, x, y, curvature):
    """``batch_hvp(u, idx)``: the Hessian or Gauss-Newton product of the mean CE on ``x[idx]``
    (``x`` as the network sees it: normalised)."""

    def bound(p, xb):
        return model.structure.apply(p, model.state, xb)

    if curvature == "hessian":
        f = batch_loss(bound, cross_entropy, "mean")
        return lambda u, idx: hvp(f, model.params, u, x[idx], y[idx])
    return lambda u, idx: gnvp(bound, lambda z, t: cross_entropy(z, t).mean(), model.params, u, x[idx], y[idx])


def _lissa_solve(model, v, x, y, key, *, config, curvature):
    # Not jitted as a whole: `lissa` compiles its own step (or scan), see its loop option. The
    # training set is normalised once here, not once per sampled minibatch.
    x = model.normalize(jnp.asarray(x))
    batch_hvp = _curvature_product(model, x, jnp.asarray(y), curvature)
    return lissa(batch_hvp, v, x.shape[0], config, key)


@functools.partial(jax.jit, static_argnames=("curvature",))
def _power_step(model, xb, yb, u, *, curvature):
    """One power-iteration step on a fixed (normalised) minibatch: ``w = C(u/‖u‖)`` and ``‖w‖``."""
    batch_hvp = _curvature_product(model, xb, yb, curvature)
    unit = jax.tree.map(lambda a: a / jnp.sqrt(tree_dot(u, u)), u)
    w = batch_hvp(unit, jnp.arange(xb.shape[0]))
    return w, jnp.sqrt(tree_dot(w, w))


def _top_eigenvalue(model, x, y, key, *, batch_size, curvature, iterations):
    """Power iteration on one random minibatch's curvature: its largest |eigenvalue|.

    Driven from Python, one compiled step per iteration (XLA:CPU is slow on convolutions
    inside a scan; see ``jaxpoison.influence.solvers.lissa``).
    """
    idx_key, vec_key = jax.random.split(key)
    idx = np.asarray(jax.random.choice(idx_key, x.shape[0], (min(batch_size, x.shape[0]),), replace=False))
    # Only this one minibatch is ever used: normalise it alone, not the whole training set.
    xb, yb = model.normalize(jnp.asarray(x[idx])), jnp.asarray(y[idx])
    leaves, treedef = jax.tree.flatten(model.params)
    keys = jax.random.split(vec_key, len(leaves))
    u = jax.tree.unflatten(treedef, [jax.random.normal(k, leaf.shape, leaf.dtype)
                                     for k, leaf in zip(keys, leaves, strict=True)])  # fmt: skip
    estimate = jnp.zeros(())
    for _ in range(iterations):
        u, estimate = _power_step(model, xb, yb, u, curvature=curvature)
    return estimate


def lissa_scale_for(top: float, config: LissaConfig) -> float:
    """A LiSSA scale the recursion converges under, given ``top``, an estimate of the largest
    curvature eigenvalue; never below ``config.scale``.

    * ``damping_form="hessian"``: ``max(scale, 2 · (top + λ))``, so ``(top + λ) / scale ≤ 1/2``.
    * ``damping_form="per_step"``: ``max(scale, 2 · top / (1 − damp))``, so the step's factor
      ``1 − damp − top/scale`` stays at least ``(1 − damp)/2``. The effective damping
      ``damp · scale`` grows with the scale chosen.

    The factor 2 leaves room for minibatches steeper than the one ``top`` was estimated on.
    """
    if config.damping_form == "per_step":
        return max(config.scale, 2.0 * top / (1.0 - config.damping))
    return max(config.scale, 2.0 * (top + config.damping))


def top_curvature_eigenvalue(model: FunctionalModel, train: Dataset, config: LissaConfig, key: jax.Array,
                             curvature: str, iterations: int = 20) -> float:  # fmt: skip
    """A power-iteration estimate of the largest |eigenvalue| of the curvature on one random
    minibatch (``config.batch_size`` examples) of ``train``."""
    return float(_top_eigenvalue(model, train.images, train.labels, key, batch_size=config.batch_size,
                                 curvature=curvature, iterations=iterations))  # fmt: skip


def safe_lissa_scale(model: FunctionalModel, train: Dataset, config: LissaConfig, key: jax.Array,
                     curvature: str, iterations: int = 20) -> float:  # fmt: skip
    """:func:`lissa_scale_for` with the top eigenvalue of :func:`top_curvature_eigenvalue`."""
    return lissa_scale_for(top_curvature_eigenvalue(model, train, config, key, curvature, iterations), config)


@functools.partial(jax.jit, static_argnames=("curvature",))
def _curvature_batch(model, xb, yb, u, *, curvature):
    """The curvature product of the mean CE on one given minibatch (pixel-space images)."""
    product = _curvature_product(model, model.normalize(xb), yb, curvature)
    return product(u, jnp.arange(xb.shape[0]))


def lissa_residual(model: FunctionalModel, train: Dataset, s, v, damping: float, key: jax.Array, *,
                   batch_size: int, curvature: str, batches: int = RESIDUAL_BATCHES) -> tuple[float, int]:  # fmt: skip
    """``(‖(C + λI)s − v‖ / ‖v‖, examples)``: how well ``s`` solves the damped system, ``C`` the
    curvature of the mean CE estimated on ``batches`` random minibatches of ``train`` drawn
    without replacement (``examples`` in all). Sampling noise in ``C`` keeps it above 0 even for
    the exact solve; compare runs at the same settings.
    """
    batch_size = min(batch_size, len(train))
    batches = max(1, min(batches, len(train) // batch_size))
    idx = np.asarray(jax.random.choice(key, len(train), (batches, batch_size), replace=False))

    def product(u, rows):
        rows = np.asarray(rows)
        return _curvature_batch(model, train.images[rows], train.labels[rows], u, curvature=curvature)

    return float(relative_residual(product, s, v, damping, idx)), int(idx.size)


def lissa_inverse_hvp(
    model: FunctionalModel, train: Dataset, v, config: LissaConfig, key: jax.Array, curvature: str = "hessian"
) -> tuple[Any, LissaInfo]:
    """``s ≈ (H + λI)⁻¹ v`` by one LiSSA run, ``H`` the Hessian (or Gauss-Newton matrix) of the mean
    cross-entropy of ``model`` over ``train`` (minibatches of ``config.batch_size``).

    The whole training set is placed on the device once; the run is one jitted call.
    """
    if curvature not in CURVATURES:
        raise InputError(f"curvature must be one of {', '.join(CURVATURES)}; got {curvature!r}.")
    return _lissa_solve(model, v, train.images, train.labels, key, config=config, curvature=curvature)


@jax.jit
def _influence_batch(model, s, x, y):
    # d/dt ℓ_i(θ + t·s) at t = 0 is ∇ℓ_iᵀ s for every example of the batch at once.
    return jax.jvp(lambda p: cross_entropy(model.replace(params=p)(x), y), (model.params,), (s,))[1]


def candidate_influence(
    model: FunctionalModel, s, candidates: Dataset, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """``∇θ ℓ(z̃)ᵀ s`` for every (already poisoned) candidate ``z̃`` of ``candidates``: ``[n]``.

    With ``s = H⁻¹ ∇θ L_asr`` this is how much up-weighting ``z̃`` *lowers* the ASR loss
    (larger = better poison). The candidates are scored in fixed-size padded batches by one
    jitted function (compiled once per model and batch shape).
    """
    n = len(candidates)
    if n == 0:
        return np.zeros(0)
    batch_size = min(batch_size, n)
    out = []
    batches = iterate_padded(n, batch_size)
    for idx, valid in progress_bar(batches, total=-(-n // batch_size), desc="influence", disable=not progress):
        values = _influence_batch(model, s, candidates.images[idx], candidates.labels[idx])
        out.append(np.asarray(values)[valid])
    return np.concatenate(out)
