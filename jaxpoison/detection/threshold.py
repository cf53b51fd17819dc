"""Influence-threshold baselines: flag training points that strongly support the poisoned test point.

The plain use of an influence method as a poison detector: score every training point
against the identified test point (labelled with the attack target) and flag the ones
above a threshold. The Δ-Influence reference flagged EK-FAC scores ``> 10``; scores
live on a model- and dataset-dependent scale, so ``threshold=None`` instead uses a
robust outlier rule — ``median + k · MAD`` of the score vector — which needs no tuning
per model and is what the TRAK baseline uses by default (TRAK scores are on another scale).

With several identified test points the baselines are "boosted" as in the Δ-Influence
paper's Tables 4–5: each point gets its own cut and a training point is flagged only when
it exceeds the cut of every point (intersection); its ROC score is the smallest of its
per-point margins over the cut.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.influence import Factors, ScoreConfig, TrakConfig, pairwise_scores, trak_scores
from jaxpoison.models import FunctionalModel

REFERENCE_EKFAC_THRESHOLD = 10.0


class ThresholdResult(NamedTuple):
    """``flagged`` sorted indices, ``scores [N]`` (higher = more suspicious), the cut of each test point, seconds."""

    flagged: np.ndarray
    scores: np.ndarray
    thresholds: tuple[float, ...]
    seconds: float


def robust_threshold(scores: np.ndarray, k: float = 5.0) -> float:
    """``median + k · 1.4826 · MAD``: a z-score-like cut that a few hundred poisons cannot drag."""
    scores = np.asarray(scores, np.float64)
    median = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - median))
    return float(median + k * mad)


def threshold_flags(scores: np.ndarray, threshold: float | None, k: float = 5.0) -> tuple[np.ndarray, float]:
    """Indices with ``score > threshold`` (``None``: :func:`robust_threshold`)."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise InputError(f"scores must be one vector [N]; got shape {scores.shape}.")
    if not np.isfinite(scores).all():
        raise InputError("the scores contain NaN or inf; check the model and factors.")
    cut = robust_threshold(scores, k) if threshold is None else float(threshold)
    return np.flatnonzero(scores > cut), cut


def _queries(test_images: np.ndarray, target: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``([k, *shape] queries, [k] target labels)`` from one example of the training ``shape`` or several."""
    images = np.asarray(test_images)
    if images.ndim == len(shape):
        images = images[None]
    if images.shape[1:] != tuple(shape) or images.shape[0] == 0:
        want = ", ".join(map(str, shape))
        raise InputError(f"test_images must be one example [{want}] or several [k, {want}] of the training set's "
                         f"shape; got {images.shape}.")  # fmt: skip
    if np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32, copy=False)
    return images, np.full(len(images), target, np.int32)


def _boosted(values: np.ndarray, threshold: float | None, start: float) -> ThresholdResult:
    """Intersect the per-point flags of score rows ``values [k, N]``; score = min margin over the cut."""
    cuts, masks = [], []
    for row in np.asarray(values):
        flagged, cut = threshold_flags(row, threshold)
        mask = np.zeros(row.shape[0], bool)
        mask[flagged] = True
        cuts.append(cut)
        masks.append(mask)
    values = np.asarray(values, np.float64)
    scores = values[0] if len(values) == 1 else np.min(values - np.array(cuts)[:, None], axis=0)
    flagged = np.flatnonzero(np.all(masks, axis=0))
    return ThresholdResult(flagged, scores, tuple(cuts), time.perf_counter() - start)


def ekfac_threshold(
    model: FunctionalModel,
    train: Dataset,
    test_images: np.ndarray,
    target: int,
    factors: Factors | None,
    score_config: ScoreConfig = ScoreConfig(),
    threshold: float | None = REFERENCE_EKFAC_THRESHOLD,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> ThresholdResult:
    """Flag training points whose EK-FAC influence on ``(test_images, target)`` exceeds ``threshold``.

    ``test_images`` is one image or ``[k, ...]`` identified points (flags intersected, see module doc).
    """
    start = time.perf_counter()
    images, labels = _queries(test_images, target, train.image_shape)
    scores = pairwise_scores(model, train, images, labels, factors, score_config, mesh=mesh, progress=progress)
    return _boosted(scores.values, threshold, start)


def trak_threshold(
    model: FunctionalModel,
    train: Dataset,
    test_images: np.ndarray,
    target: int,
    config: TrakConfig = TrakConfig(),
    threshold: float | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> ThresholdResult:
    """Flag training points whose TRAK score on ``(test_images, target)`` exceeds ``threshold``.

    ``test_images`` is one image or ``[k, ...]`` identified points (flags intersected, see module doc).
    """
    start = time.perf_counter()
    images, labels = _queries(test_images, target, train.image_shape)
    values = trak_scores(model, train, images, labels, config, mesh=mesh, progress=progress).values
    return _boosted(values, threshold, start)
