"""Spectral signatures (Tran, Li & Madry, NeurIPS 2018) on penultimate features.

Two variants:

* :func:`spectral_signatures` — the method of the paper. Within each class (by the
  possibly poisoned training label), centre the features, take the top right singular
  vector ``v`` of the centred matrix and score each point by its squared projection
  ``(<f - mu, v>)^2``. Poisons that share a feature-space direction inflate the top
  singular value and land at the top of this score, so the ``round(removal_factor *
  poison_fraction * n_c)`` highest-scoring points of each class are flagged (the paper
  removes 1.5x the expected number of poisons).
* :func:`spectral_signatures_reference` — the rule the Δ-Influence reference code ran:
  one uncentred SVD over all features, keep the singular directions whose singular
  value exceeds a threshold and flag points whose norm in that subspace exceeds a second
  threshold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxpoison.detection.features import check_features
from jaxpoison.errors import InputError


class SpectralResult(NamedTuple):
    """What a spectral-signature detector found.

    Attributes:
      flagged: sorted int64 indices of the flagged training points.
      scores: float64 ``[N]`` continuous suspicion score (higher = more suspicious),
        comparable across classes; use it for ROC curves.
      raw_scores: float64 ``[N]`` the detector's raw score (the per-class squared
        projection, or the reference variant's subspace norm).
      removed_per_class: ``{class: number flagged}`` for every class present in the
        labels (including skipped classes, with 0); empty for the reference variant,
        which does not look at labels.
    """

    flagged: np.ndarray
    scores: np.ndarray
    raw_scores: np.ndarray
    removed_per_class: dict[int, int]


def spectral_signatures(features, labels, poison_fraction: float, removal_factor: float = 1.5) -> SpectralResult:
    """Per-class spectral signatures with the paper's top-k removal rule.

    Args:
      features: ``[N, D]`` penultimate features (see :func:`penultimate_features`).
      labels: ``[N]`` integer training labels as the model saw them (poisoned labels
        for label-flipping attacks, the target class for backdoors).
      poison_fraction: the expected share ``eps`` of poisons, in (0, 1). As in the paper it
        is applied within each class: a class of ``n_c`` points loses
        ``min(n_c, round(removal_factor * eps * n_c))`` points, where ``round`` is
        Python's (halves round to even). For a backdoor confined to one target class,
        pass the poisons' share of *that* class to remove enough of them.
      removal_factor: multiple of the expected poison count to remove (1.5 in the paper).

    Returns:
      A :class:`SpectralResult`. ``scores`` is the squared projection divided by its mean
      over the point's class: the raw scores of different classes live on different
      scales (the top singular value of each class), and this puts every class's scores
      at mean 1 so a single threshold, and hence a ROC curve, is meaningful across classes.
      A class whose raw scores are all 0 gets scores 0.

    Classes with fewer than 2 points have no direction to estimate: they are skipped
    (nothing flagged, score 0).

    Raises:
      ValueError: malformed features/labels, ``poison_fraction`` not in (0, 1) or
        ``removal_factor <= 0``.
    """
    feats, labs = check_features(features, labels)
    eps = float(poison_fraction)
    if not 0.0 < eps < 1.0:
        raise InputError(f"poison_fraction must be in (0, 1); got {poison_fraction}.")
    factor = float(removal_factor)
    if not (np.isfinite(factor) and factor > 0.0):
        raise InputError(f"removal_factor must be a positive number; got {removal_factor}.")

    n = feats.shape[0]
    raw = np.zeros(n)
    scores = np.zeros(n)
    flagged = []
    removed: dict[int, int] = {}
    for c in np.unique(labs):
        idx = np.flatnonzero(labs == c)
        removed[int(c)] = 0
        if idx.size < 2:
            continue
        centred = feats[idx] - feats[idx].mean(axis=0)
        # Top right singular vector of the centred class matrix = top principal direction.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        class_raw = (centred @ vt[0]) ** 2
        raw[idx] = class_raw
        mean_raw = class_raw.mean()
        if mean_raw > 0:
            scores[idx] = class_raw / mean_raw
        k = min(idx.size, round(factor * eps * idx.size))
        if k > 0:
            # Stable sort on the negated score: ties are broken by dataset order.
            top = np.argsort(-class_raw, kind="stable")[:k]
            flagged.append(idx[top])
        removed[int(c)] = int(k)
    flagged_idx = np.sort(np.concatenate(flagged)).astype(np.int64) if flagged else np.zeros(0, np.int64)
    return SpectralResult(flagged_idx, scores, raw, removed)


def spectral_signatures_reference(
    features, singular_threshold: float = 7.0, norm_threshold: float = 7.0
) -> SpectralResult:
    """The spectral-signature rule of the Δ-Influence reference code.

    One SVD ``F = U S V^T`` of the whole (uncentred, all classes together) feature
    matrix. The directions with singular value ``> singular_threshold`` are kept and each
    point is scored by the norm of its row of ``U[:, kept] * S[kept]`` — the norm of its
    feature vector projected onto the kept subspace. Points with score
    ``> norm_threshold`` are flagged. Both comparisons are strict.

    The default thresholds (7.0 and 7.0) are those of the reference, in the feature scale
    of its CIFAR-10 ResNet-18; they are not scale-free. For another model, dataset or
    feature normalisation they must be retuned (e.g. from the singular spectrum and the
    score distribution on clean data), or the rule flags everything or nothing.

    Args:
      features: ``[N, D]`` penultimate features.
      singular_threshold: keep singular directions with singular value above this.
      norm_threshold: flag points whose subspace norm is above this.

    Returns:
      A :class:`SpectralResult` with ``scores == raw_scores`` (the subspace norms) and an
      empty ``removed_per_class``.

    Raises:
      ValueError: malformed features or negative/non-finite thresholds.
    """
    feats, _ = check_features(features)
    for name, value in (("singular_threshold", singular_threshold), ("norm_threshold", norm_threshold)):
        if not (np.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a non-negative finite number; got {value}.")
    u, s, _ = np.linalg.svd(feats, full_matrices=False)
    kept = s > singular_threshold
    norms = np.linalg.norm(u[:, kept] * s[kept], axis=1)
    flagged = np.flatnonzero(norms > norm_threshold).astype(np.int64)
    return SpectralResult(flagged, norms, norms.copy(), {})
