"""Losses and measurements on logits, per example.

Influence needs two functions of the model's output: the **training loss** whose
gradient says how a training point moves the parameters, and the **measurement**
whose gradient says what we care about at the query. Both are written here for a
single example's logits ``[C]`` and label ``[]`` and summed over a batch, which is
the convention of the influence literature (kronfluence, Koh & Liang): a batch's
gradient is the sum of its per-example gradients.

Sign convention used throughout jaxpoison: measurements behave like losses (lower
is better for the query's label), so a **positive** influence score means that
up-weighting the training point lowers the measurement, i.e. it *supports* the
query's prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpoison.errors import InputError

# Bump when a change alters influence scores numerically; cached run stages keyed on it
# (factors, influence-based detectors) are then recomputed instead of silently reused.
# 2: cross-entropy in margin form (exact gradients for confidently fitted points).
NUMERICS_VERSION = 2

LogitLoss = Callable[[jax.Array, jax.Array], jax.Array]  # (logits [C], label []) -> scalar


def _label_margin(logits: jax.Array, label: jax.Array) -> jax.Array:
    """``logit_y - logsumexp(logits without y)`` for logits ``[..., C]`` and labels ``[...]``."""
    label = jnp.asarray(label)
    is_label = jax.nn.one_hot(label, logits.shape[-1], dtype=bool)
    own = jnp.take_along_axis(logits, label[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return own - jax.nn.logsumexp(jnp.where(is_label, -jnp.inf, logits), axis=-1)


def cross_entropy(logits: jax.Array, label: jax.Array) -> jax.Array:
    """Cross-entropy of one example (or a batch: logits ``[..., C]``, labels ``[...]``).

    Written as ``softplus(-margin)``, which equals ``logsumexp(logits) - logit_y`` but keeps
    its gradient exact for confidently fitted points. The usual ``softmax - onehot`` form
    rounds ``p_y`` to 1 in float32 once the margin passes ~16, so the label's gradient
    component becomes exactly 0 while the others stay ~e^-margin: the gradient points the
    wrong way. Backdoor poisons are fitted that confidently (half of a Fashion-MNIST
    BadNet victim's poisons), and influence only uses the gradient's direction.
    """
    return jax.nn.softplus(-_label_margin(logits, label))


def margin_measurement(logits: jax.Array, label: jax.Array) -> jax.Array:
    """``-(logit_y - logsumexp(logits without y))``: kronfluence's classification measurement.

    It is a loss-like quantity (negative margin), smooth, and, unlike the
    cross-entropy, does not saturate when the query is already confidently
    classified.
    """
    return -_label_margin(logits, label)


MEASUREMENTS: dict[str, LogitLoss] = {"cross_entropy": cross_entropy, "margin": margin_measurement}


def get_measurement(name_or_fn: str | LogitLoss) -> LogitLoss:
    """A measurement by name (``"margin"``, ``"cross_entropy"``) or a callable passed through."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in MEASUREMENTS:
        raise InputError(
            f"unknown measurement {name_or_fn!r}; choose one of {', '.join(MEASUREMENTS)} or pass a function."
        )
    return MEASUREMENTS[name_or_fn]


def batch_loss(
    apply: Callable, loss: LogitLoss, reduction: str = "sum"
) -> Callable[[object, jax.Array, jax.Array], jax.Array]:
    """``f(params, x [N, ...], y [N]) -> scalar``: ``loss`` summed (or averaged) over the batch.

    ``apply(params, x)`` is the model with its state bound (see ``FunctionalModel.bind``).
    """
    if reduction not in ("sum", "mean"):
        raise InputError(f"reduction must be 'sum' or 'mean'; got {reduction!r}.")

    def f(params, x, y):
        values = jax.vmap(loss)(apply(params, x), y)
        return values.sum() if reduction == "sum" else values.mean()

    return f
