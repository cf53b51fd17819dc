"""Selective Synaptic Dampening (SSD, Foster et al. 2024): shrink the weights the forget set relies on.

Importance of a parameter for a set = the mean over minibatches of the squared gradient
of the mean cross-entropy (inference mode). Parameters far more important to the forget
set than to the retained set (``forget > α · retain``) are multiplied by
``min(λ · retain / forget, 1)``; all other parameters are untouched. No training.

The reference ran α ∈ {2, 10, 50} and λ = factor · α with factor ∈ {0.01, 0.1, 1}, and
kept the best clean accuracy among settings with attack success < 10 % on the test set.
jaxpoison scores the grid with a :class:`~jaxpoison.unlearning.common.Selector`: by default
on clean validation data and the flagged set only (no trigger); the reference's
attack-aware rule, on triggered validation images, is the ``oracle`` selector. SSD trains
nothing: its cost is one gradient pass over the training set (the two importances) plus one
evaluation per grid point, well inside the 10 % of the training budget that SCRUB and BadT get.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.models import FunctionalModel
from jaxpoison.training import iterate_padded
from jaxpoison.unlearning.common import Selector, UnlearnResult, select, split_forget_retain


@dataclasses.dataclass(frozen=True)
class SSDConfig:
    """Attributes: the α grid, the λ/α grid, minibatch size of the importance passes."""

    alphas: tuple[float, ...] = (2.0, 10.0, 50.0)
    lambda_factors: tuple[float, ...] = (0.01, 0.1, 1.0)
    batch_size: int = 512

    def __post_init__(self):
        if not self.alphas or not self.lambda_factors or min(self.alphas) <= 0 or min(self.lambda_factors) <= 0:
            raise InputError("SSD needs non-empty, positive alpha and lambda-factor grids.")
        if self.batch_size < 1:
            raise InputError("batch_size must be ≥ 1.")


@jax.jit
def _squared_grad(model, x, y, valid):
    def loss(p):
        ce = cross_entropy(model.replace(params=p)(x), y)
        return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1)

    return jax.tree.map(jnp.square, jax.grad(loss)(model.params))


def importance(model: FunctionalModel, dataset: Dataset, batch_size: int = 512):
    """Mean over minibatches of the squared gradient of the mean cross-entropy, per parameter."""
    if len(dataset) == 0:
        raise InputError("cannot compute importances on an empty set.")
    batch_size = min(batch_size, len(dataset))
    total, batches = None, 0
    for idx, valid in iterate_padded(len(dataset), batch_size):
        x, y = jnp.asarray(dataset.images[idx]), jnp.asarray(dataset.labels[idx])
        sq = _squared_grad(model, x, y, jnp.asarray(valid, jnp.float32))
        total = sq if total is None else jax.tree.map(jnp.add, total, sq)
        batches += 1
    return jax.tree.map(lambda t: t / batches, total)


@jax.jit
def dampen(params, forget_importance, retain_importance, alpha, lam):
    """Multiply parameters with ``forget > α·retain`` by ``min(λ·retain/forget, 1)``."""

    def one(p, f, r):
        selected = f > alpha * r
        factor = jnp.minimum(lam * r / jnp.where(f > 0, f, 1.0), 1.0)
        return jnp.where(selected, p * factor, p)

    return jax.tree.map(one, params, forget_importance, retain_importance)


def selective_synaptic_dampening(
    victim: FunctionalModel, dataset: Dataset, flagged, config: SSDConfig = SSDConfig(), *,
    selector: Selector | None = None,
) -> UnlearnResult:  # fmt: skip
    """SSD over the (α, λ) grid; returns the setting ``selector`` chooses (the last without one)."""
    forget, retain, forget_idx = split_forget_retain(dataset, flagged)
    if forget_idx.size == 0:
        return UnlearnResult(victim, {"method": "ssd", "forgotten": 0, "selection": None, "chosen": None,
                                      "candidates": [], "note": "nothing flagged; model unchanged"})  # fmt: skip
    f_imp = importance(victim, forget, config.batch_size)
    r_imp = importance(victim, retain, config.batch_size)
    candidates = []
    for alpha in config.alphas:
        for factor in config.lambda_factors:
            params = dampen(victim.params, f_imp, r_imp, alpha, factor * alpha)
            candidates.append(({"alpha": alpha, "lambda": factor * alpha}, victim.replace(params=params)))
    best, scores = select(candidates, selector)
    selected = np.mean([float(jnp.mean(f > candidates[best][0]["alpha"] * r))
                        for f, r in zip(jax.tree.leaves(f_imp), jax.tree.leaves(r_imp), strict=True)])  # fmt: skip
    info = {"method": "ssd", "forgotten": int(forget_idx.size), "selection": selector.name if selector else None,
            "chosen": candidates[best][0], "candidates": scores, "mean_selected_fraction": float(selected)}  # fmt: skip
    return UnlearnResult(candidates[best][1], info)
