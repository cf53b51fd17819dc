"""Accuracy and loss of a functional model on a dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset, normalize
from jaxpoison.errors import InputError


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


class NonFiniteOutputError(InputError):
    """The model outputs NaN or infinite logits, so no accuracy or attack metric can be read off it."""


def predict_logits(apply: Callable, params: Any, state: Any, dataset: Dataset, batch_size: int = 1000) -> np.ndarray:
    """Logits ``[N, num_classes]`` of ``apply(params, state, normalised images)``.

    Raises:
      NonFiniteOutputError: some logits are NaN or infinite (a diverged model): their argmax
        would read as class 0 and pass for a prediction.
    """
    out = _forward_all(apply, params, state, dataset, batch_size, labels=False)
    return np.concatenate(out) if out else np.zeros((0, dataset.num_classes), np.float32)


def predict_labels(apply: Callable, params: Any, state: Any, dataset: Dataset, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes ``[N]`` (int32), the argmax taken on device; refuses as :func:`predict_logits`."""
    out = _forward_all(apply, params, state, dataset, batch_size, labels=True)
    return np.concatenate(out) if out else np.zeros(0, np.int32)


def _forward_all(apply, params, state, dataset: Dataset, batch_size: int, labels: bool) -> list[np.ndarray]:
    batch_size = min(batch_size, max(len(dataset), 1))
    forward = _jitted_forward(apply, labels)
    out, bad = [], 0
    for idx, valid in iterate_padded(len(dataset), batch_size):
        x = jnp.asarray(dataset.images[idx])
        result, finite = forward(params, state, x, dataset.mean, dataset.std)
        out.append(np.asarray(result)[valid])
        bad += int(np.sum(~np.asarray(finite)[valid]))
    if bad:
        raise NonFiniteOutputError(
            f"the model produces non-finite outputs (NaN or infinite logits) on {bad} of {len(dataset)} examples, "
            "so its predictions mean nothing; it has most likely diverged in training: retrain it with a lower "
            "learning rate, or check its parameters and the inputs for non-finite values."
        )
    return out


_FORWARD_CACHE: dict[tuple[Callable, bool], Callable] = {}


def _jitted_forward(apply: Callable, labels: bool = False) -> Callable:
    # One jitted wrapper per apply function (and output), so repeated evaluations do not retrace.
    # The finiteness flag per row is reduced in the same program as the forward pass: no second pass.
    if (apply, labels) not in _FORWARD_CACHE:

        def forward(p, s, x, mean, std):
            logits = apply(p, s, normalize(x, mean, std))
            finite = jnp.all(jnp.isfinite(logits), axis=-1)
            return (jnp.argmax(logits, -1).astype(jnp.int32) if labels else logits), finite

        _FORWARD_CACHE[apply, labels] = jax.jit(forward)
    return _FORWARD_CACHE[apply, labels]


def evaluate(apply: Callable, params: Any, state: Any, dataset: Dataset, batch_size: int = 1000) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of the model on ``dataset``.

    Raises:
      NonFiniteOutputError: the model outputs NaN or infinite logits.
    """
    logits = predict_logits(apply, params, state, dataset, batch_size)
    labels = dataset.labels
    loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), labels)))
    preds = logits.argmax(-1).astype(np.int32)
    return EvalResult(accuracy=float(np.mean(preds == labels)), loss=loss, predictions=preds)
