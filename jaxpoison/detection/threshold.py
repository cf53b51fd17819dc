"""Influence-threshold baselines: flag training points that strongly support the poisoned test point.

The plain use of an influence method as a poison detector: score every training point
against the identified test point (labelled with the attack target) and flag the ones
above a threshold. The Δ-Influence reference flagged EK-FAC scores ``> 10``; scores
live on a model- and dataset-dependent scale, so ``threshold=None`` instead uses a
robust outlier rule — ``median + k · MAD`` of the score vector — which needs no tuning
per model and is what the TRAK baseline uses by default (TRAK scores are on another scale).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.influence import Factors, ScoreConfig, TrakConfig, pairwise_scores, trak_scores
from jaxpoison.models import FunctionalModel

REFERENCE_EKFAC_THRESHOLD = 10.0


class ThresholdResult(NamedTuple):
    """``flagged`` sorted indices, ``scores [N]`` (higher = more suspicious), the threshold used, seconds."""

    flagged: np.ndarray
    scores: np.ndarray
    threshold: float
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
        raise ValueError(f"scores must be one vector [N]; got shape {scores.shape}.")
    if not np.isfinite(scores).all():
        raise ValueError("the scores contain NaN or inf; check the model and factors.")
    cut = robust_threshold(scores, k) if threshold is None else float(threshold)
    return np.flatnonzero(scores > cut), cut


def _query(test_image: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(test_image, np.float32)
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError("threshold baselines take one test point; run them per point for several.")
        image = image[0]
    return image[None], np.array([target], np.int32)


def ekfac_threshold(
    model: FunctionalModel,
    train: Dataset,
    test_image: np.ndarray,
    target: int,
    factors: Factors | None,
    score_config: ScoreConfig = ScoreConfig(),
    threshold: float | None = REFERENCE_EKFAC_THRESHOLD,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> ThresholdResult:
    """Flag training points whose EK-FAC influence on ``(test_image, target)`` exceeds ``threshold``."""
    start = time.perf_counter()
    images, labels = _query(test_image, target)
    scores = pairwise_scores(model, train, images, labels, factors, score_config, mesh=mesh, progress=progress)
    values = np.asarray(scores.values[0])
    flagged, cut = threshold_flags(values, threshold)
    return ThresholdResult(flagged, values, cut, time.perf_counter() - start)


def trak_threshold(
    model: FunctionalModel,
    train: Dataset,
    test_image: np.ndarray,
    target: int,
    config: TrakConfig = TrakConfig(),
    threshold: float | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> ThresholdResult:
    """Flag training points whose TRAK score on ``(test_image, target)`` exceeds ``threshold``."""
    start = time.perf_counter()
    images, labels = _query(test_image, target)
    values = np.asarray(trak_scores(model, train, images, labels, config, mesh=mesh, progress=progress).values[0])
    flagged, cut = threshold_flags(values, threshold)
    return ThresholdResult(flagged, values, cut, time.perf_counter() - start)
