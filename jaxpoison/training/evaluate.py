"""The one forward pass over a dataset, and the accuracy, loss and predictions read off it."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

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
    if len(dataset) == 0:
        return np.zeros((0, dataset.num_classes), np.float32)
    return forward(apply, params, state, dataset, batch_size)


def predict_labels(apply: Callable, params: Any, state: Any, dataset: Dataset, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes ``[N]`` (int32), the argmax taken on device; refuses as :func:`predict_logits`."""
    if len(dataset) == 0:
        return np.zeros(0, np.int32)
    return forward(apply, params, state, dataset, batch_size, argmax=True)


@functools.partial(jax.jit, static_argnames=("fn", "argmax"))
def _forward_batch(fn, params, state, x, mean, std, *, argmax):
    # `fn` is static: jax keys the compiled program on the function, so every pass with the same
    # model function and batch shape reuses it. The finiteness flag per row is reduced in the same
    # program as the forward pass: no second pass over the data.
    out = fn(params, state, normalize(x, mean, std))
    finite = jnp.all(jnp.isfinite(out.reshape(out.shape[0], -1)), axis=-1)
    return (jnp.argmax(out, -1).astype(jnp.int32) if argmax else out), finite


def forward(
    fn: Callable,
    params: Any,
    state: Any,
    dataset: Dataset,
    batch_size: int = 1000,
    *,
    argmax: bool = False,
    progress: bool = False,
    desc: str = "forward",
) -> np.ndarray:
    """The one forward pass over a dataset: ``fn(params, state, normalised images)`` for every example.

    ``fn`` is a model's ``apply`` (logits) or ``features``. Batches have one fixed size (the
    last is padded and the padding dropped), so the pass compiles once per function and
    batch shape. ``argmax`` returns the predicted classes instead, computed on device.

    Raises:
      NonFiniteOutputError: some outputs are NaN or infinite (a diverged model).
    """
    n = len(dataset)
    batch_size = min(batch_size, max(n, 1))
    out, bad = [], 0
    batches = tqdm(iterate_padded(n, batch_size), total=math.ceil(n / batch_size), desc=desc, disable=not progress,
                   leave=False, mininterval=1.0)  # fmt: skip
    for idx, valid in batches:
        result, finite = _forward_batch(fn, params, state, jnp.asarray(dataset.images[idx]), dataset.mean,
                                        dataset.std, argmax=argmax)  # fmt: skip
        out.append(np.asarray(result)[valid])
        bad += int(np.sum(~np.asarray(finite)[valid]))
    if bad:
        raise NonFiniteOutputError(
            f"the model produces non-finite outputs (NaN or infinite values) on {bad} of {n} examples, "
            "so its predictions mean nothing; it has most likely diverged in training: retrain it with a lower "
            "learning rate, or check its parameters and the inputs for non-finite values."
        )
    return np.concatenate(out)


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
