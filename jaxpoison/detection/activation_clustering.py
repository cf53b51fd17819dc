"""Activation clustering (Chen et al., 2018) on penultimate features.

Within each class (by the possibly poisoned training label): centre the features,
project them onto their top principal components, split them into two clusters with
k-means and call the smaller cluster suspicious. Poisons that the model separates from
the clean examples of their label form a small, well separated cluster.

By default this is the rule the Δ-Influence reference code ran: the smaller cluster of
*every* class with at least 2 points is flagged, so the detector always removes
something from every class, poisoned or not. Chen et al. instead decide per class
whether it is poisoned at all — from the relative size of the smaller cluster and from
how well the two clusters separate (silhouette score); ``min_silhouette`` enables the
silhouette part of that rule.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from jaxpoison.detection.features import check_features
from jaxpoison.errors import InputError


class ClusterResult(NamedTuple):
    """What activation clustering found.

    Attributes:
      flagged: sorted int64 indices of the flagged training points.
      scores: float64 ``[N]`` continuous suspicion score ``1 - |cluster| / |class|``
        (higher = more suspicious): points of a small cluster score close to 1, points of
        the large cluster below 0.5; 0 for skipped classes. Use it for ROC curves.
      silhouette: ``{class: silhouette score}`` of the 2-means split in the reduced space,
        for classes where it is defined (at least 3 points and two non-empty clusters);
        other classes are absent.
      relative_size: ``{class: |smaller cluster| / |class|}`` for every clustered class.
      clusters: int64 ``[N]`` k-means cluster of each point (0 or 1; -1 in skipped classes).
    """

    flagged: np.ndarray
    scores: np.ndarray
    silhouette: dict[int, float]
    relative_size: dict[int, float]
    clusters: np.ndarray


def activation_clustering(
    features, labels, n_components: int = 3, seed: int = 3407, min_silhouette: float | None = None
) -> ClusterResult:
    """Per-class PCA + 2-means; flag the smaller cluster.

    Args:
      features: ``[N, D]`` penultimate features (see :func:`penultimate_features`).
      labels: ``[N]`` integer training labels as the model saw them.
      n_components: principal components kept before clustering (3 as in the reference
        and the paper); a class with fewer points or feature dimensions keeps
        ``min(n_components, n_c, D)``.
      seed: ``random_state`` of ``KMeans(n_clusters=2, n_init=10)``.
      min_silhouette: ``None`` (default, the reference rule) flags the smaller cluster of
        every class. A number flags only classes whose silhouette score is at least this
        (Chen et al.'s rule); classes without a silhouette score are then not flagged.

    Returns:
      A :class:`ClusterResult`. When both clusters have the same size, cluster 0 of
      k-means counts as the smaller one. Classes with fewer than 2 points are skipped
      (nothing flagged, score 0, no entry in ``relative_size``/``silhouette``).

    Raises:
      ValueError: malformed features/labels or ``n_components < 1``.
    """
    feats, labs = check_features(features, labels)
    if int(n_components) != n_components or n_components < 1:
        raise InputError(f"n_components must be a positive integer; got {n_components}.")
    if min_silhouette is not None and not np.isfinite(min_silhouette):
        raise InputError(f"min_silhouette must be a finite number or None; got {min_silhouette}.")

    n = feats.shape[0]
    scores = np.zeros(n)
    clusters = np.full(n, -1, np.int64)
    silhouette: dict[int, float] = {}
    relative_size: dict[int, float] = {}
    flagged = []
    for c in np.unique(labs):
        idx = np.flatnonzero(labs == c)
        if idx.size < 2:
            continue
        centred = feats[idx] - feats[idx].mean(axis=0)
        k = min(int(n_components), idx.size, feats.shape[1])
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        reduced = centred @ vt[:k].T
        assignment = KMeans(n_clusters=2, random_state=seed, n_init=10).fit_predict(reduced).astype(np.int64)
        sizes = np.bincount(assignment, minlength=2)
        smaller = int(np.argmin(sizes))  # argmin takes cluster 0 on a tie
        clusters[idx] = assignment
        scores[idx] = 1.0 - sizes[assignment] / idx.size
        relative_size[int(c)] = float(sizes[smaller] / idx.size)
        # silhouette_score needs 2 <= number of clusters <= n_samples - 1.
        if idx.size >= 3 and np.all(sizes > 0):
            silhouette[int(c)] = float(silhouette_score(reduced, assignment))
        if min_silhouette is not None and silhouette.get(int(c), -np.inf) < min_silhouette:
            continue
        flagged.append(idx[assignment == smaller])
    flagged_idx = np.sort(np.concatenate(flagged)).astype(np.int64) if flagged else np.zeros(0, np.int64)
    return ClusterResult(flagged_idx, scores, silhouette, relative_size, clusters)
