"""Δ-Influence: find the training points behind one poisoned test point.

A backdoored model classifies a triggered test image as the attack target because a
group of poisoned training points supports that prediction. Their influence on the
test point is large and positive — and fragile: once the test image is transformed
(flipped, blurred, inverted, …) and relabelled away from the target, the poisons'
support for it *collapses*, while the influence of clean points moves both ways. The
"influence collapse" is what Δ-Influence detects:

1. ``old = score(train, [x, target])`` — one score per training point;
2. ``n_b`` modified queries ``(T_k(x), y_k)``: a random transformation ``T_k`` and a
   random label ``y_k ≠ target`` (``modify="both"``, the reference "MM");
   ablations keep the image (``"label"``, "ML") or the label (``"image"``, "MI").
   ``T_k`` is drawn from the paper's eight transformations: flip, rotation, colour jitter,
   elastic, blur, inversion, colour switch and affine (see
   :mod:`jaxpoison.detection.transforms`). A transformed image never equals ``x``: an
   unchanged image-only query has ``ΔInfl = 0``, which is never ``< τ = 0``, so a single one
   would stop every point from reaching the vote at ``n_tol = 0``;
3. ``new = score(train, queries)`` — ``[n_b, N]``, and ``ΔInfl = new − old``;
4. a training point is flagged when ``ΔInfl < τ`` in at least ``n_b − n_tol`` rows.

All ``1 + n_b`` queries (times the number of identified test points) are scored in
**one pass** over the training set by :func:`jaxpoison.influence.pairwise_scores`, so
detection costs about one plain influence query, not ``1 + n_b`` of them.

Defaults: ``n_b = 50``, ``τ = 0``, ``n_tol = 1`` (the reference used 2 on CIFAR-10
BadNet, 1 on Imagenette Witches' Brew, and ``τ = −40, n_tol = 0`` on CIFAR-100).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset, require_images
from jaxpoison.detection.transforms import TRANSFORM_NAMES, flip_labels, transform_batch
from jaxpoison.errors import InputError
from jaxpoison.influence import Factors, ScoreConfig, pairwise_scores
from jaxpoison.influence.kfac import is_finite_real, is_integer
from jaxpoison.influence.scores import check_images
from jaxpoison.models import FunctionalModel, Normalization

MODIFICATIONS = ("both", "label", "image")
AGGREGATIONS = ("union", "intersection")

# A transformed query closer than this to the original (max over pixels, in [0, 1] units) counts
# as unchanged: far above the float rounding of the normalised round trip, far below 1/255.
UNCHANGED_ATOL = 1e-5
# Redraws of unchanged queries before giving up; each redraw repeats a row with probability at
# most (share of names that leave the image unchanged), so a few suffice unless all of them do.
MAX_REDRAWS = 16


@dataclasses.dataclass(frozen=True)
class DeltaConfig:
    """Attributes:
    n_b: modified queries per test point.
    tau: ``ΔInfl < tau`` counts as a collapse; any finite number (NaN would never compare
      true, so nothing would be flagged).
    n_tol: collapses may be missing in up to ``n_tol`` of the ``n_b`` rows.
    modify: ``"both"`` (transform and relabel), ``"label"`` (relabel only) or
      ``"image"`` (transform only, label kept at the target).
    transforms: the transformation names drawn from uniformly: by default the paper's eight
      (:data:`~jaxpoison.detection.transforms.TRANSFORM_NAMES`); the reference code's seven are
      :data:`~jaxpoison.detection.transforms.REFERENCE_TRANSFORM_NAMES`. On grayscale data the
      names that are identities on one channel (colour switch) are not drawn.
    label_rule: ``"uniform"`` (labels ≠ target, repeats allowed; the reference on
      CIFAR-10) or ``"distinct"`` (``n_b`` different labels; the reference on CIFAR-100).
    space: ``"pixel"`` transforms images in [0, 1]; ``"normalized"`` transforms the
      normalised tensor like the reference code (colour jitter then clamps it to [0, 1]).
    aggregate: how several test points combine: ``"intersection"`` (the paper's Tables 4–5)
      flags only points flagged by all of them, ``"union"`` any point flagged by one.
    seed: seeds the transformations and labels.
    """

    n_b: int = 50
    tau: float = 0.0
    n_tol: int = 1
    modify: str = "both"
    transforms: tuple[str, ...] = TRANSFORM_NAMES
    label_rule: str = "uniform"
    space: str = "pixel"
    aggregate: str = "intersection"
    seed: int = 0

    def __post_init__(self):
        for name in ("n_b", "n_tol", "seed"):
            if not is_integer(getattr(self, name)):
                raise InputError(f"DeltaConfig.{name} must be an integer; got {getattr(self, name)!r}.")
        if not is_finite_real(self.tau):
            raise InputError(
                f"DeltaConfig.tau must be a finite number; got {self.tau!r}. ΔInfl < NaN is never true, so nothing "
                "would be flagged; use tau=0 (the paper's default) or another finite threshold."
            )
        if self.n_b < 1:
            raise InputError(f"n_b must be ≥ 1; got {self.n_b}.")
        if not 0 <= self.n_tol < self.n_b:
            raise InputError(
                f"n_tol must lie in [0, n_b) = [0, {self.n_b}); got {self.n_tol}. With n_tol ≥ n_b every training "
                "point would be flagged; lower n_tol or raise n_b."
            )
        for name, value, allowed in (("modify", self.modify, MODIFICATIONS),
                                     ("label_rule", self.label_rule, ("uniform", "distinct")),
                                     ("space", self.space, ("pixel", "normalized")),
                                     ("aggregate", self.aggregate, AGGREGATIONS)):  # fmt: skip
            if value not in allowed:
                raise InputError(f"{name} must be one of {allowed}; got {value!r}.")
        if isinstance(self.transforms, str) or not all(isinstance(t, str) for t in self.transforms):
            raise InputError(f"transforms must be a tuple of names from {TRANSFORM_NAMES}; got {self.transforms!r}.")
        unknown = set(self.transforms) - set(TRANSFORM_NAMES)
        if not self.transforms or unknown:
            raise InputError(f"transforms must be a non-empty subset of {TRANSFORM_NAMES}; unknown: {sorted(unknown)}.")

    def replace(self, **changes) -> DeltaConfig:
        return dataclasses.replace(self, **changes)


class Queries(NamedTuple):
    """The ``n_b`` modified queries of one test point (pixel-space images)."""

    images: np.ndarray
    labels: np.ndarray
    transforms: tuple[str | None, ...]


class DeltaResult(NamedTuple):
    """What Δ-Influence found.

    Attributes:
      flagged: sorted indices of the flagged training points.
      scores: ``[N]`` continuous suspicion for ROC curves: the collapse count, ties broken
        by the mean ΔInfl (more negative = more suspicious); the max over test points.
      counts: ``[k, N]`` rows with ``ΔInfl < τ`` per test point.
      delta: ``[k, n_b, N]`` the ΔInfl matrices.
      old: ``[k, N]`` the scores against the unmodified test points.
      queries: the :class:`Queries` of each test point.
      seconds: wall time of the query construction, the scoring pass and the vote.
      config: the configuration used.
    """

    flagged: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    delta: np.ndarray
    old: np.ndarray
    queries: tuple[Queries, ...]
    seconds: dict
    config: DeltaConfig


def transformed_queries(
    key: jax.Array, image: np.ndarray, config: DeltaConfig, normalization: Normalization | None = None
) -> tuple[np.ndarray, tuple]:
    """The ``n_b`` transformed copies of one pixel-space image, none equal to it: ``(images, names)``.

    ``normalization`` (the model's) is needed only by ``config.space="normalized"``, which
    transforms the normalised image.

    A transformation can leave a particular image unchanged: a flip of a mirror-symmetric image, a
    geometric one on a constant image. Such rows are redrawn, all together, from
    ``transform_batch(jax.random.fold_in(key, attempt), ...)`` for ``attempt = 1, 2, …``, so the
    result stays deterministic given ``key``. After :data:`MAX_REDRAWS` redraws a ``ValueError``
    says which transformations could not change the image.
    """
    image = np.asarray(image, np.float32)
    mean, std = (None, None) if normalization is None else map(jnp.asarray, normalization)

    def draw(draw_key):
        images, choice = transform_batch(draw_key, jnp.asarray(image), config.transforms, config.n_b,
                                         space=config.space, mean=mean, std=std)  # fmt: skip
        return np.array(images), np.array(choice)

    def unchanged_rows(images):
        return np.abs(images - image[None]).max(axis=(1, 2, 3)) <= UNCHANGED_ATOL

    images, choice = draw(key)
    unchanged = unchanged_rows(images)
    attempt = 0
    while unchanged.any() and attempt < MAX_REDRAWS:
        attempt += 1
        fresh, fresh_choice = draw(jax.random.fold_in(key, attempt))
        images[unchanged], choice[unchanged] = fresh[unchanged], fresh_choice[unchanged]
        unchanged = unchanged_rows(images)
    if unchanged.any():
        stuck = sorted({config.transforms[int(c)] for c in choice[unchanged]})
        raise InputError(
            f"{int(unchanged.sum())} of the {config.n_b} transformed queries stayed unchanged (within "
            f"{UNCHANGED_ATOL}) after {MAX_REDRAWS} redraws: {stuck} cannot change this test image (is it constant "
            "or mirror-symmetric?). An unchanged image-only query has ΔInfl = 0 and never collapses; pick "
            "DeltaConfig.transforms that change it."
        )
    return images, tuple(config.transforms[int(c)] for c in choice)


def make_queries(
    key: jax.Array,
    image: np.ndarray,
    target: int,
    num_classes: int,
    config: DeltaConfig,
    normalization: Normalization | None = None,
) -> Queries:
    """Build the ``n_b`` modified queries of one (pixel-space) test image.

    Transformed images come from :func:`transformed_queries` (which reads ``normalization``
    only for ``space="normalized"``), so none equals ``image``.
    """
    image_key, label_key = jax.random.split(key)
    if config.modify == "label":
        images = np.repeat(np.asarray(image, np.float32)[None], config.n_b, axis=0)
        names: tuple[str | None, ...] = (None,) * config.n_b
    else:
        images, names = transformed_queries(image_key, image, config, normalization)
    if config.modify == "image":
        labels = np.full(config.n_b, target, np.int32)
    else:
        labels = np.asarray(flip_labels(label_key, config.n_b, num_classes, target,
                                        distinct=config.label_rule == "distinct"))  # fmt: skip
    return Queries(images, labels.astype(np.int32), names)


def vote(delta: np.ndarray, tau: float, n_tol: int) -> tuple[np.ndarray, np.ndarray]:
    """The collapse vote on one ``[n_b, N]`` ΔInfl matrix: ``(counts [N], flagged mask [N])``.

    A training point is flagged when its influence drops below ``tau`` under at least
    ``n_b − n_tol`` of the ``n_b`` modified queries.

    Examples:
      Three modifications (rows) of one test point and three training points (columns):
      the first point collapses every time, the third in two of three, the second almost
      never. With ``n_tol=1`` two collapses of three suffice.

      >>> delta = np.array([[-1.0, 0.5, -2.0],
      ...                   [-0.5, -0.1, -1.0],
      ...                   [-3.0, 0.2, 0.4]])
      >>> counts, flagged = vote(delta, tau=0.0, n_tol=1)
      >>> counts.tolist(), flagged.tolist()
      ([3, 1, 2], [True, False, True])
    """
    delta = np.asarray(delta)
    if delta.ndim != 2:
        raise InputError(f"delta must be [n_b, N]; got shape {delta.shape}.")
    if not 0 <= n_tol < delta.shape[0]:
        raise InputError(f"n_tol must lie in [0, {delta.shape[0]}) for {delta.shape[0]} rows; got {n_tol}.")
    counts = (delta < tau).sum(0)
    return counts, counts >= delta.shape[0] - n_tol


def suspicion(counts: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Continuous score: the count, with ties broken by the mean ΔInfl inside (−0.5, 0.5)."""
    mean = np.asarray(delta, np.float64).mean(0)
    scale = np.abs(mean).max()
    tiebreak = -mean / (2.01 * scale) if scale > 0 else np.zeros_like(mean)
    return counts + tiebreak


def predicted_labels(model: FunctionalModel, images: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.argmax(model(jnp.asarray(images)), -1))


def check_test_points(model: FunctionalModel, images: np.ndarray, target: int) -> np.ndarray:
    """Warn for every identified test point the model does not actually assign to ``target``."""
    predicted = predicted_labels(model, images)
    misses = np.flatnonzero(predicted != target)
    if misses.size:
        warnings.warn(
            f"{misses.size} of {len(images)} 'poisoned' test point(s) (positions {misses.tolist()}) are predicted as "
            f"{predicted[misses].tolist()}, not the target {target}: the backdoor did not fire on them, so their "
            "influence need not point at the poisons. Pick test points the model assigns to the target.",
            stacklevel=3,
        )
    return predicted


def delta_influence(
    model: FunctionalModel,
    train: Dataset,
    test_images: np.ndarray,
    target: int,
    factors: Factors | None,
    config: DeltaConfig = DeltaConfig(),
    score_config: ScoreConfig = ScoreConfig(),
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> DeltaResult:
    """Run Δ-Influence from one or several identified poisoned test points.

    Args:
      model: the (backdoored) victim.
      train: the training set it was trained on (pixel space).
      test_images: ``[H, W, C]`` or ``[k, H, W, C]`` pixel-space test points the model
        assigns to ``target`` (triggered images). A point predicted otherwise is warned about.
      target: the class the test points are (mis)classified as.
      factors: EK-FAC/K-FAC factors fitted on ``train`` (checked by hash), or ``None``
        for plain gradient dot products.
      config: Δ-Influence settings (transformations, ``n_b``, ``tau``, ``n_tol``, aggregation).
      score_config: the influence scores' measurement, damping and batch size.
      mesh: data mesh for the scoring pass.
      progress: progress bar.

    Returns:
      A :class:`DeltaResult`. The flags come from :func:`vote` on each test point's
      ``[n_b, N]`` change of influence, combined over the test points by ``config.aggregate``.

    References:
      Wenjie Li, Jiawei Li, Pengcheng Zeng, Christian Schroeder de Witt, Ameya Prabhu and
      Amartya Sanyal. *Delta-Influence: Identifying Poisons via Influence Functions.*
      Transactions on Machine Learning Research (OpenReview ``4XtcG8NNaG``).

      Roger Grosse, Juhan Bae, Cem Anil, Nelson Elhage, et al. *Studying Large Language Model
      Generalization with Influence Functions.* arXiv:2308.03296, 2023 (the EK-FAC influence
      scores it is built on).
    """
    if not isinstance(config, DeltaConfig):
        raise InputError(f"config must be a DeltaConfig; got {type(config).__name__}.")
    if len(train) == 0:
        raise InputError("the training set is empty; there is nothing to detect.")
    if config.modify != "label":
        require_images(train, f"Δ-Influence's image transformations (modify={config.modify!r})")
    test_images = check_images(test_images, train.image_shape, "test images", kind=train.kind)
    if not (is_integer(target) and 0 <= target < train.num_classes):
        raise InputError(f"target {target!r} is not a class of the {train.num_classes}-class training set.")
    target = int(target)
    check_test_points(model, test_images, target)

    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(config.seed), len(test_images))
    queries = tuple(make_queries(k, x, target, train.num_classes, config, model.normalization)
                    for k, x in zip(keys, test_images, strict=True))  # fmt: skip
    # Per test point: the original, then its n_b modified queries — all in one scoring pass.
    images = np.concatenate([np.concatenate([x[None], q.images]) for x, q in zip(test_images, queries, strict=True)])
    labels = np.concatenate([np.concatenate([[target], q.labels]) for q in queries]).astype(np.int32)
    built = time.perf_counter()

    values = pairwise_scores(model, train, images, labels, factors, score_config, mesh=mesh, progress=progress).values
    scored = time.perf_counter()

    values = np.asarray(values).reshape(len(test_images), 1 + config.n_b, len(train))
    old, new = values[:, 0], values[:, 1:]
    delta = new - old[:, None]
    counts, masks, scores = [], [], []
    for d in delta:
        c, m = vote(d, config.tau, config.n_tol)
        counts.append(c)
        masks.append(m)
        scores.append(suspicion(c, d))
    combine = np.any if config.aggregate == "union" else np.all
    flagged = np.flatnonzero(combine(np.stack(masks), axis=0))
    score = (np.max if config.aggregate == "union" else np.min)(np.stack(scores), axis=0)
    seconds = {"queries": built - start, "scoring": scored - built, "vote": time.perf_counter() - scored}
    seconds["total"] = sum(seconds.values())
    return DeltaResult(flagged, score, np.stack(counts), delta.astype(np.float32), old, queries, seconds, config)
