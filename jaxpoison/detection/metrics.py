"""How well a detector finds the poisons: TPR, precision, FPR and AuROC.

Everything here is plain numpy. :func:`auroc` is the Mann–Whitney U statistic with
average ranks for ties, which equals the area under the ROC curve of
:func:`roc_curve` (and ``sklearn.metrics.roc_auc_score``).
"""

from __future__ import annotations

import numpy as np

from jaxpoison.errors import InputError


def _as_indices(indices, n: int, name: str) -> np.ndarray:
    """``indices`` as a 1-D int64 array in ``[0, n)``; raises on anything else."""
    arr = np.asarray(indices)
    if arr.dtype == bool:
        raise InputError(f"{name} must be integer indices, not a boolean mask; convert with np.flatnonzero(mask).")
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of indices; got shape {arr.shape}.")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be integers; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(f"{name} must lie in [0, {n}); got range [{arr.min()}, {arr.max()}].")
    return arr


def mask_from_indices(indices, n: int) -> np.ndarray:
    """Boolean mask ``[n]``, True at ``indices``.

    Repeated indices are harmless here (the mask is a set); indices outside ``[0, n)``,
    negative ones included, raise ``ValueError``.
    """
    if int(n) != n or n < 0:
        raise InputError(f"n must be a non-negative integer; got {n}.")
    mask = np.zeros(int(n), bool)
    mask[_as_indices(indices, int(n), "indices")] = True
    return mask


def _check_binary_problem(scores, is_poison) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_poison)
    if s.ndim != 1 or y.shape != s.shape:
        raise InputError(f"scores and is_poison must be 1-D of equal length; got shapes {s.shape} and {y.shape}.")
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise InputError("is_poison must be boolean (or 0/1).")
        y = y.astype(bool)
    if np.any(np.isnan(s)):
        raise InputError(f"scores must not contain NaN; {int(np.isnan(s).sum())} do.")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InputError(f"ROC needs both poisons and clean points; got {n_pos} poisons among {y.size} points.")
    return s, y


def roc_curve(scores, is_poison) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of ``scores`` (higher = more suspicious) for the labels ``is_poison``.

    A point is flagged at threshold ``t`` when ``score >= t``. The thresholds are the
    distinct scores in decreasing order, preceded by ``+inf`` for the "flag nothing"
    point, so the curve runs from ``(0, 0)`` to ``(1, 1)`` with non-decreasing fpr and tpr.
    Every distinct score gives a point (no collinear points are dropped), like
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Args:
      scores: ``[N]`` real scores; ``±inf`` are allowed, NaN is not.
      is_poison: ``[N]`` booleans; both classes must be present.

    Returns:
      ``(fpr, tpr, thresholds)``, each of length ``1 + number of distinct scores``.
    """
    s, y = _check_binary_problem(scores, is_poison)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Last position of each run of equal scores (compare values, not differences: inf - inf is NaN).
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)
    tps = np.cumsum(y)[ends]
    fps = ends + 1 - tps
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    thresholds = np.concatenate([[np.inf], s[ends]])
    return fpr, tpr, thresholds


def auroc(scores, is_poison) -> float:
    """Area under the ROC curve: the probability that a random poison outscores a random
    clean point, ties counting one half.

    Computed as the Mann–Whitney U statistic ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
    where ``R_pos`` is the sum of the poisons' ranks, tied scores sharing their average rank.
    1.0 for perfect separation, 0.5 for constant scores.

    Raises:
      ValueError: mismatched shapes, NaN scores, or only one class present.
    """
    s, y = _check_binary_problem(scores, is_poison)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each group of equal scores: its last rank minus (count - 1) / 2.
    group_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = group_rank[inverse.reshape(-1)]
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def detection_metrics(flagged, poison_indices, n_train: int, scores=None, seconds: float | None = None) -> dict:
    """Compare a detector's flags (and optional scores) with the true poisons.

    Args:
      flagged: indices the detector flagged, in ``[0, n_train)``, without repeats.
      poison_indices: indices of the true poisons, in ``[0, n_train)``, without repeats.
      n_train: size of the training set the indices refer to.
      scores: optional ``[n_train]`` continuous scores, higher = more suspicious
        (``±inf`` allowed, NaN not); used for ``auroc``.
      seconds: optional detector run time, passed through.

    Returns:
      A dict with ``tpr`` (share of poisons flagged; ``None`` when there are no poisons),
      ``precision`` (share of flags that are poisons; 0.0 when nothing is flagged, so
      "flag nothing" never looks precise), ``fpr`` (share of clean points flagged;
      ``None`` when every point is a poison), ``n_flagged``, ``n_poisons``,
      ``n_true_positives``, ``n_false_positives``, ``auroc`` (``None`` without scores or
      when only one class is present) and ``seconds``.

    Raises:
      ValueError: an index outside ``[0, n_train)``, a repeated index (a repeat usually
        means a bug upstream, so it is not silently dropped), a boolean mask instead of
        indices, or ``scores`` of the wrong length or containing NaN.
    """
    if int(n_train) != n_train or n_train < 1:
        raise InputError(f"n_train must be a positive integer; got {n_train}.")
    n_train = int(n_train)
    flags = _as_indices(flagged, n_train, "flagged")
    poisons = _as_indices(poison_indices, n_train, "poison_indices")
    for name, arr in (("flagged", flags), ("poison_indices", poisons)):
        if np.unique(arr).size != arr.size:
            raise InputError(f"{name} contains repeated indices; pass each index once.")
    is_flagged = mask_from_indices(flags, n_train)
    is_poison = mask_from_indices(poisons, n_train)
    tp = int(np.sum(is_flagged & is_poison))
    fp = int(np.sum(is_flagged & ~is_poison))
    n_poisons = int(poisons.size)
    n_clean = n_train - n_poisons

    area = None
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (n_train,):
            raise InputError(f"scores must have shape ({n_train},), one per training point; got {s.shape}.")
        if np.any(np.isnan(s)):
            raise InputError(f"scores must not contain NaN; {int(np.isnan(s).sum())} do.")
        if 0 < n_poisons < n_train:
            area = auroc(s, is_poison)
    return {
        "tpr": tp / n_poisons if n_poisons else None,
        "precision": tp / flags.size if flags.size else 0.0,
        "fpr": fp / n_clean if n_clean else None,
        "n_flagged": int(flags.size),
        "n_poisons": n_poisons,
        "n_true_positives": tp,
        "n_false_positives": fp,
        "auroc": area,
        "seconds": None if seconds is None else float(seconds),
    }
