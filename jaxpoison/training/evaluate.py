"""The one forward pass over a dataset, and the accuracy, loss and predictions read off it."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel
from jaxpoison.progress import progress_bar


class EvalResult(NamedTuple):
    accuracy: float
    loss: float
    predictions: np.ndarray  # int32 [N]


def iterate_padded(n: int, batch_size: int, start: int = 0):
    """Yield ``(indices, valid)`` covering ``range(n)`` in fixed-size batches, from batch ``start`` on.

    The last batch is padded by repeating index 0 and ``valid`` says which rows are
    real, so a jitted function sees one shape only and compiles once.
    """
    for first in range(start * batch_size, n, batch_size):
        idx = np.arange(first, min(first + batch_size, n))
        valid = np.ones(batch_size, bool)
        if idx.size < batch_size:
            valid[idx.size :] = False
            idx = np.concatenate([idx, np.zeros(batch_size - idx.size, idx.dtype)])
        yield idx, valid


class NonFiniteOutputError(InputError):
    """The model outputs NaN or infinite logits, so no accuracy or attack metric can be read off it."""


def predict_logits(model: FunctionalModel, dataset: Dataset, batch_size: int = 1000) -> np.ndarray:
    """Logits ``[N, num_classes]`` of ``model`` on the dataset's images.

    Raises:
      NonFiniteOutputError: some logits are NaN or infinite (a diverged model): their argmax
        would read as class 0 and pass for a prediction.
    """
    if len(dataset) == 0:
        return np.zeros((0, dataset.num_classes), np.float32)
    return forward(model, dataset, batch_size)


def predict_labels(model: FunctionalModel, dataset: Dataset, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes ``[N]`` (int32), the argmax taken on device; refuses as :func:`predict_logits`."""
    if len(dataset) == 0:
        return np.zeros(0, np.int32)
    return forward(model, dataset, batch_size, argmax=True)


@functools.partial(jax.jit, static_argnames=("output", "argmax"))
def _forward_batch(model, x, *, output, argmax):
    # The model is a pytree argument: every pass with the same model structure and batch shape
    # reuses one compiled program. The finiteness flag per row is reduced in the same program as
    # the forward pass: no second pass over the data.
    out = model.features(x) if output == "features" else model(x)
    finite = jnp.all(jnp.isfinite(out.reshape(out.shape[0], -1)), axis=-1)
    return (jnp.argmax(out, -1).astype(jnp.int32) if argmax else out), finite


OUTPUTS = ("logits", "features")


def forward(
    model: FunctionalModel,
    dataset: Dataset,
    batch_size: int = 1000,
    *,
    output: str = "logits",
    argmax: bool = False,
    progress: bool = False,
    desc: str = "forward",
) -> np.ndarray:
    """The one forward pass over a dataset: the model's ``output`` for every example.

    ``output`` is ``"logits"`` or ``"features"`` (the penultimate features). Batches have one
    fixed size (the last is padded and the padding dropped), so the pass compiles once per
    model structure and batch shape. ``argmax`` returns the predicted classes instead,
    computed on device.

    Raises:
      NonFiniteOutputError: some outputs are NaN or infinite (a diverged model).
    """
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}; got {output!r}.")
    n = len(dataset)
    batch_size = min(batch_size, max(n, 1))
    out, bad = [], 0
    batches = progress_bar(iterate_padded(n, batch_size), total=math.ceil(n / batch_size), desc=desc,
                           disable=not progress)  # fmt: skip
    for idx, valid in batches:
        result, finite = _forward_batch(model, jnp.asarray(dataset.images[idx]), output=output, argmax=argmax)
        out.append(np.asarray(result)[valid])
        bad += int(np.sum(~np.asarray(finite)[valid]))
    if bad:
        raise NonFiniteOutputError(
            f"the model produces non-finite outputs (NaN or infinite values) on {bad} of {n} examples, "
            "so its predictions mean nothing; it has most likely diverged in training: retrain it with a lower "
            "learning rate, or check its parameters and the inputs for non-finite values."
        )
    return np.concatenate(out)


def evaluate(model: FunctionalModel, dataset: Dataset, batch_size: int = 1000) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of the model on ``dataset``.

    Raises:
      NonFiniteOutputError: the model outputs NaN or infinite logits.
    """
    logits = predict_logits(model, dataset, batch_size)
    labels = dataset.labels
    loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), labels)))
    preds = logits.argmax(-1).astype(np.int32)
    return EvalResult(accuracy=float(np.mean(preds == labels)), loss=loss, predictions=preds)
