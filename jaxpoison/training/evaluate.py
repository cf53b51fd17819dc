"""Accuracy and loss of a functional model on a dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset, normalize


class EvalResult(NamedTuple):
    accuracy: float
    loss: float
    predictions: np.ndarray  # int32 [N]


def iterate_padded(n: int, batch_size: int):
    """Yield ``(indices, valid)`` covering ``range(n)`` in fixed-size batches.

    The last batch is padded by repeating index 0 and ``valid`` says which rows are
    real, so a jitted function sees one shape only and compiles once.
    """
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        valid = np.ones(batch_size, bool)
        if idx.size < batch_size:
            valid[idx.size :] = False
            idx = np.concatenate([idx, np.zeros(batch_size - idx.size, idx.dtype)])
        yield idx, valid


def predict_logits(
    apply: Callable, params: Any, state: Any, dataset: Dataset, batch_size: int = 1000
) -> np.ndarray:
    """Logits ``[N, num_classes]`` of ``apply(params, state, normalised images)``."""
    batch_size = min(batch_size, max(len(dataset), 1))
    forward = _jitted_forward(apply)
    out = []
    for idx, valid in iterate_padded(len(dataset), batch_size):
        x = jnp.asarray(dataset.images[idx])
        logits = forward(params, state, x, dataset.mean, dataset.std)
        out.append(np.asarray(logits)[valid])
    return np.concatenate(out) if out else np.zeros((0, dataset.num_classes), np.float32)


_FORWARD_CACHE: dict[Callable, Callable] = {}


def _jitted_forward(apply: Callable) -> Callable:
    # One jitted wrapper per apply function, so repeated evaluations do not retrace.
    if apply not in _FORWARD_CACHE:
        _FORWARD_CACHE[apply] = jax.jit(lambda p, s, x, mean, std: apply(p, s, normalize(x, mean, std)))
    return _FORWARD_CACHE[apply]


def evaluate(apply: Callable, params: Any, state: Any, dataset: Dataset, batch_size: int = 1000) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of the model on ``dataset``."""
    logits = predict_logits(apply, params, state, dataset, batch_size)
    labels = dataset.labels
    loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), labels)))
    preds = logits.argmax(-1).astype(np.int32)
    return EvalResult(accuracy=float(np.mean(preds == labels)), loss=loss, predictions=preds)
