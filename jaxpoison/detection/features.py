"""Penultimate-layer features of a dataset, the input of the feature-space detectors.

Spectral signatures and activation clustering both look at a trained model's
penultimate activations. :func:`penultimate_features` computes them with the library's one
forward pass (:func:`jaxpoison.training.evaluate.forward`: fixed-size padded batches, compiled
once). :func:`check_features` is the shared input validation of the detectors.
"""

from __future__ import annotations

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models.functional import FunctionalModel
from jaxpoison.training.evaluate import forward


def penultimate_features(
    model: FunctionalModel, dataset: Dataset, batch_size: int = 512, progress: bool = True
) -> np.ndarray:
    """Penultimate features ``[N, D]`` of every image of ``dataset``, in dataset order.

    Images go through ``model.features`` in inference mode (BatchNorm running statistics);
    the model normalises them as at training time.

    Args:
      model: the model (e.g. from :func:`jaxpoison.models.to_functional`).
      dataset: the images to embed (typically the possibly poisoned training set).
      batch_size: images per forward pass; capped at ``len(dataset)``. The last batch is
        padded to this size and the padding dropped, so one shape is compiled.
      progress: show a tqdm progress bar.

    Returns:
      float32 array ``[N, D]``.

    Raises:
      ValueError: the dataset is empty or ``batch_size < 1``.
    """
    n = len(dataset)
    if n == 0:
        raise InputError("cannot compute features of an empty dataset (0 images).")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size}.")
    features = forward(model, dataset, int(batch_size), output="features", progress=progress, desc="features")
    return np.asarray(features, np.float32).reshape(n, -1)


def check_features(features, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a feature matrix (and optional labels) for the detectors.

    Args:
      features: array-like ``[N, D]`` of finite numbers.
      labels: optional integer array-like ``[N]``.

    Returns:
      ``(features as float64, labels as int64 or None)``.

    Raises:
      ValueError: ``features`` is not 2-D, is empty, holds NaN or inf; ``labels`` is not a
        1-D integer array of length ``N``.
    """
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise InputError(f"features must be a 2-D array [N, D]; got shape {feats.shape}.")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise InputError(f"features must hold at least one sample and one dimension; got shape {feats.shape}.")
    if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
        raise InputError(f"features must be numeric; got dtype {feats.dtype}.")
    feats = feats.astype(np.float64)
    if not np.all(np.isfinite(feats)):
        bad = int(np.sum(~np.all(np.isfinite(feats), axis=1)))
        raise InputError(f"features must be finite; {bad} of {feats.shape[0]} rows hold NaN or inf.")
    if labels is None:
        return feats, None
    labs = np.asarray(labels)
    if labs.ndim != 1 or labs.shape[0] != feats.shape[0]:
        raise InputError(
            f"labels must be a 1-D array with one label per feature row ({feats.shape[0]}); got shape {labs.shape}."
        )
    if not np.issubdtype(labs.dtype, np.integer):
        raise InputError(f"labels must be integers; got dtype {labs.dtype}.")
    return feats, labs.astype(np.int64)
