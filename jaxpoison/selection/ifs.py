"""IFS: Influence-based Fair Selection (Wei et al., AAAI 2025), the method of the IFS paper.

No public code exists; the steps follow the paper, and the defaults listed below are
jaxpoison's choices, not the paper's.

1. **Surrogate.** Poison a random set at the same rate (RS, ``replace`` mode) and train a
   surrogate model on it for ``surrogate_epochs`` epochs.
2. **Group-based pruning.** With the surrogate's penultimate features ``g(x)`` of the clean
   training images, each class's prototype is its mean feature ``v_c``; within every class
   the samples are sorted by Euclidean distance to ``v_c`` and split by distance rank into
   ``η`` groups of (nearly) equal size. **Group 1 is the closest** (the paper: "samples
   closest to the prototype are designated as Group 1", and only Group 1 is searched).
3. **Influence on the attack.** The ASR loss is ``L_asr(θ) = mean CE(f(x̃_v), target)`` over
   triggered non-target images *that are never candidates* (the ASR set, see below). One LiSSA
   run gives ``s = (H + λI)⁻¹ ∇θ L_asr``, ``H`` the curvature (Gauss-Newton by default, or the
   Hessian) of the mean training loss on the surrogate's poisoned training set (minibatch
   products). The influence of a group-1 candidate ``z`` is then one dot product with its
   *poisoned* version ``z̃`` (trigger applied, label = target):

       influence(z) = ∇θ ℓ(z̃)ᵀ s  = −I_up,loss(z̃, L_asr)        (Koh & Liang's sign flipped)

   **Larger = better poison**: a positive value means up-weighting ``z̃`` lowers the ASR loss
   (jaxpoison's convention, "the training point supports the query"). All candidates are
   scored in one pass of fixed-size padded batches by a forward-mode JVP of the per-example
   losses along ``s`` (exactly the per-example gradient dot products, without materialising
   per-example gradients), jitted once per model and batch shape.
4. **Fair selection.** Each non-target class present in the pool gets an equal quota
   ``k_c = ⌊k / m⌋`` of the ``k = round(r·N)`` poisons (``m`` classes; the remainder goes one
   each to the lowest class ids), and keeps its ``k_c`` most influential group-1 candidates:
   its threshold ``τ^c`` is the ``k_c``-th largest influence, i.e. the quantile of the sorted
   group-1 influences that keeps exactly ``k_c``; the quantile kept, ``k_c / |G1_c|``, is
   reported per class. The paper writes ``τ^c = Quantile(Sort↓(I^c), ηr)``: keeping the share
   ``ηr`` of a group of ``|D^c|/η`` gives ``r·|D^c|`` poisons per class, i.e. proportional to class
   size and ``r·(N − N_target)`` in all. The equal quota instead spends exactly ``k``; on
   balanced classes the two differ only by the target class's share being spread over the others.
5. Retraining the victim on the selection is the caller's job.

The ASR set. A candidate inside ``L_asr`` would be scored with its own self-influence
``(1/n_v)·∇ℓ(z̃)ᵀ H⁻¹ ∇ℓ(z̃)``, typically far larger than any cross-influence, so the ASR set and
the candidates are kept disjoint:

* by default (``validation=None``) ``validation_size`` non-target **training** images (never the
  test set) are drawn at random from the pool, outside the surrogate's random poisons, and
  held out: they and every pool image byte-identical to one of them (duplicates in the data)
  are removed from the candidates, so they can never be scored or selected. The surrogate still
  trains on them, clean. At most half of the pool is held out.
* a caller's ``validation`` set is used as given, after checking that none of its images drawn
  into the ASR set is byte-identical (float32 pixels, label ignored) to a non-target training
  image; one that is raises :class:`SelectionError`. The check sees exact copies only, not
  re-encoded or augmented ones.

``info["asr_set"]`` records which set was used (see :func:`ifs_selection`).

Defaults that are ours (the paper's values are not in the text we have): ``η = 4``, a
10-epoch Adam surrogate, an ASR set of 500 images, and LiSSA with damping λ = 0.01 *in
Hessian units*, scale 25 (raised automatically to twice the estimated top eigenvalue when
that is larger), depth 500, one repeat, 128-example batches (500 steps are about one epoch of
a 60k-image training set).

These are **not** the values of the common public LiSSA implementation (the PyTorch
``s_test`` of Koh & Liang's influence functions). That one writes its damping as a per-step
shrink, ``h ← v + (1 − damp)·h − H·h/scale``, with damp 0.01, scale 25 and depth 5000; its fixed
point is ``(H + damp·scale·I)⁻¹ v``, an effective λ = 0.25 in Hessian units, 25 times our
damping. It also inverts the Hessian, where our default is the Gauss-Newton matrix. Its
settings are ``IFSConfig(curvature="hessian", auto_scale=False, lissa=LissaConfig(damping=0.01,
scale=25, depth=5000, damping_form="per_step"))``; with ``auto_scale`` on, a raised scale also
raises that form's effective damping (``damp · scale``). On digits (default CNN, blended
ε = 0.2, r = 3 %, seed 0) they diverged at depth 500 (‖s‖ grew from 1.6 to 2.4·10⁷, residual
6.5·10⁵), where the defaults settled to a 7 % change over the last tenth and a residual of 0.15
on 1024 examples. ``info["lissa"]`` reports the effective damping, the scale used and the
convergence diagnostics of every run.

Curvature: the paper inverts the Hessian; jaxpoison's default is the Gauss-Newton matrix
(``curvature="gauss_newton"``), with the Hessian one setting away. On an under-trained,
non-convex surrogate the Hessian has negative eigenvalues and the LiSSA recursion then
grows instead of settling. On digits with the default CNN and LiSSA settings, after 200–500
steps ‖s‖ was still changing by 20–50 % over the last tenth of the steps with the Hessian
(and had grown 30–1300× from its start), by 4–7 % with ``curvature="gauss_newton"`` (positive
semi-definite), and on digits with ε = 0.1, r = 3 % the Hessian recursion diverged to
non-finite values at the default scale. :func:`ifs_selection` warns when the recursion has not
settled and raises when it is no longer finite. Both curvatures are checked against dense
``jax.hessian`` / Gauss-Newton solves in float64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings

import jax
import numpy as np

from jaxpoison.attacks.poison import PoisonConfig, poison_dataset
from jaxpoison.data import Dataset
from jaxpoison.influence import LissaConfig
from jaxpoison.influence.full_ihvp import (
    CURVATURES,
    candidate_influence,
    lissa_inverse_hvp,
    lissa_residual,
    lissa_scale_for,
    mean_loss_gradient,
    top_curvature_eigenvalue,
)
from jaxpoison.selection.common import (
    ProxyTrainer,
    Selection,
    SelectionError,
    finish,
    forward,
    poison_budget,
    round_seed,
    triggered,
)
from jaxpoison.selection.random import random_selection

UNSETTLED = 0.1  # warn when ‖s‖ changed by more than this over the last 10 % of the LiSSA steps
HELD_OUT = "held-out training images"
CALLERS = "caller's validation set"


def _default_lissa() -> LissaConfig:
    return LissaConfig(damping=0.01, scale=25.0, depth=500, repeats=1, batch_size=128)


@dataclasses.dataclass(frozen=True)
class IFSConfig:
    """Settings of IFS (all defaults are jaxpoison's; see the module docstring).

    Attributes:
      eta: number of distance groups per class (≥ 1); only group 1 (closest to the
        prototype, ``1/η`` of each class) is scored. Default 4: with ``C`` balanced classes it
        leaves room for poison rates up to ``(C − 1) / (C·η)`` (22 % on 10 classes) while
        pruning three quarters of the candidates.
      surrogate_epochs: epochs of the surrogate trained on the randomly poisoned set. Default 10.
      learning_rate, batch_size: the surrogate's Adam learning rate and batch size.
      model: surrogate architecture for :func:`jaxpoison.models.create_model`. Default ``"cnn"``.
      model_kwargs: extra constructor arguments (e.g. ``{"width": 4, "hidden": 16}``).
      lissa: the LiSSA settings (damping 0.01 in Hessian units, scale 25, depth 500, 1 repeat,
        batch 128; not the public reference's values, see the module docstring). ``scale``
        must exceed the largest curvature eigenvalue or the recursion diverges (reported as
        an error that says so). ``damping_form="per_step"`` selects the reference's
        ``(1 − damp)`` parametrisation, effective damping ``damp · scale``.
      curvature: ``"gauss_newton"`` (default; positive semi-definite, so LiSSA settles) or
        ``"hessian"`` (the exact Hessian, as the paper inverts; negative curvature of an
        under-trained surrogate can make its recursion blow up).
      auto_scale: raise ``lissa.scale`` when a power-iteration estimate of the largest
        curvature eigenvalue calls for it (see :func:`lissa_scale_for`), so the recursion
        converges without hand-tuning.
      validation_size: triggered non-target images in the ASR loss. Default 500. Without a
        caller's validation set they are training images held out of the candidates, at most
        half of the non-target pool.
      influence_batch_size: candidates per batch of the scoring pass.
    """

    eta: int = 4
    surrogate_epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 128
    model: str = "cnn"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    lissa: LissaConfig = dataclasses.field(default_factory=_default_lissa)
    curvature: str = "gauss_newton"
    auto_scale: bool = True
    validation_size: int = 500
    influence_batch_size: int = 256

    def __post_init__(self):
        check_eta(self.eta)
        if self.surrogate_epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise SelectionError("surrogate_epochs and batch_size must be ≥ 1 and learning_rate positive.")
        if not isinstance(self.lissa, LissaConfig):
            raise SelectionError(f"lissa must be a jaxpoison.influence.LissaConfig; got {type(self.lissa).__name__}.")
        if self.curvature not in CURVATURES:
            raise SelectionError(f"curvature must be one of {', '.join(CURVATURES)}; got {self.curvature!r}.")
        if self.validation_size < 1 or self.influence_batch_size < 1:
            raise SelectionError("validation_size and influence_batch_size must be ≥ 1.")


def check_eta(eta) -> int:
    """``eta`` as an int; raises unless it is an integer ≥ 1."""
    if isinstance(eta, bool) or not isinstance(eta, int | np.integer) or eta < 1:
        raise SelectionError(f"eta (the number of groups per class) must be an integer ≥ 1; got {eta!r}.")
    return int(eta)


# --------------------------------------------------------------------------- group-based pruning


def class_prototypes(features, labels) -> dict[int, np.ndarray]:
    """``{class: mean feature vector}`` for every class present in ``labels``.

    Args:
      features: ``[n, d]`` feature vectors.
      labels: ``[n]`` integer classes.
    """
    features, labels = _check_features(features, labels)
    return {int(c): features[labels == c].mean(axis=0) for c in np.unique(labels)}


def group_split(features, labels, eta: int) -> np.ndarray:
    """Group index (1..η) of every point: within each class, rank by Euclidean distance to the
    class prototype (ties: lower position first) and cut the ranking into ``η`` consecutive
    groups of sizes differing by at most one (the closer groups take the extra points).
    **Group 1 holds the points closest to their prototype.**

    Returns:
      ``int64 [n]``; a class with fewer than ``η`` points leaves its last groups empty.
    """
    eta = check_eta(eta)
    features, labels = _check_features(features, labels)
    prototypes = class_prototypes(features, labels)
    groups = np.zeros(labels.size, np.int64)
    for c, proto in prototypes.items():
        members = np.flatnonzero(labels == c)
        dist = np.linalg.norm(features[members] - proto, axis=1)
        ranked = members[np.lexsort((members, dist))]
        for g, part in enumerate(np.array_split(ranked, eta)):
            groups[part] = g + 1
    return groups


def group1_size(class_size: int, eta: int) -> int:
    """How many of a class's ``class_size`` points :func:`group_split` puts in group 1: ``⌈n / η⌉``."""
    return -(-int(class_size) // check_eta(eta))


def _check_features(features, labels) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise SelectionError(f"need features [n, d] and labels [n]; got {features.shape} and {labels.shape}.")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise SelectionError(f"labels must be integers; got dtype {labels.dtype}.")
    return features, labels


# --------------------------------------------------------------------------- fair selection


def fair_quota(k: int, classes) -> dict[int, int]:
    """Split ``k`` poisons equally over ``classes``: ``⌊k / m⌋`` each, and the remainder ``k mod m``
    one each to the lowest class ids.

    Examples:
      IFS's class-fair quota: 11 poisons over three non-target classes.

      >>> fair_quota(11, [3, 1, 2])
      {1: 4, 2: 4, 3: 3}
    """
    classes = sorted(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes):
        raise SelectionError(f"classes must be a non-empty list of distinct class ids; got {classes}.")
    if k < 0:
        raise SelectionError(f"k must be ≥ 0; got {k}.")
    base, extra = divmod(int(k), len(classes))
    return {c: base + (i < extra) for i, c in enumerate(classes)}


def fair_select(scores, labels, quota: dict[int, int]) -> tuple[np.ndarray, dict[int, float | None]]:
    """Per class, the ``quota[c]`` highest-scoring candidates (ties: lower position first).

    Args:
      scores: ``[n]`` influence of each candidate (larger = better poison).
      labels: ``[n]`` class of each candidate.
      quota: ``{class: how many}``, e.g. from :func:`fair_quota`.

    Returns:
      ``(positions, thresholds)``: sorted positions into ``scores`` of the chosen candidates,
      and each class's threshold ``τ^c`` (the lowest score kept; ``None`` for a quota of 0).

    Raises:
      SelectionError: a class has fewer candidates than its quota (the message says how many).
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise SelectionError(f"scores and labels must be 1-D of one length; got {scores.shape} and {labels.shape}.")
    if not np.all(np.isfinite(scores)):
        raise SelectionError("scores contain NaN or infinite values.")
    chosen, thresholds = [], {}
    for c, need in sorted(quota.items()):
        members = np.flatnonzero(labels == c)
        if members.size < need:
            raise SelectionError(
                f"class {c} has {members.size} candidates in group 1 but its quota is {need} poisons; "
                "lower eta (larger groups) or the poison rate."
            )
        top = members[np.lexsort((members, -scores[members]))][:need]
        chosen.append(top)
        thresholds[int(c)] = float(scores[top[-1]]) if need else None
    positions = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return positions.astype(np.int64), thresholds


# --------------------------------------------------------------------------- the method


def image_digests(images) -> np.ndarray:
    """One digest per image of its exact float32 pixels (``[n]`` of 16-byte strings): equal
    digests mean byte-identical images."""
    images = np.ascontiguousarray(np.asarray(images, np.float32))
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images], dtype="S16")


def asr_holdout(dataset: Dataset, pool, exclude, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Carve the ASR set out of the training pool: ``(held, candidates)``.

    ``held`` holds ``size`` random indices of ``pool`` not in ``exclude`` (sorted);
    ``candidates`` is ``pool`` without ``held`` and without every other pool image
    byte-identical to a held one, so no ASR image can be scored or selected.

    Raises:
      SelectionError: ``size`` exceeds half the pool or what is left outside ``exclude``.
    """
    pool = np.asarray(pool, np.int64)
    free = np.setdiff1d(pool, np.asarray(exclude, np.int64))
    limit = min(pool.size // 2, free.size)
    if size > limit:
        raise SelectionError(
            f"validation_size {size} exceeds the {limit} non-target training images IFS may hold out for its ASR set "
            f"(at most half of the {pool.size}-image pool, outside the surrogate's random poisons); lower "
            "validation_size or pass a held-out validation set."
        )
    held = np.sort(rng.choice(free, size, replace=False))
    digests = image_digests(dataset.images[pool])
    leaked = np.isin(digests, digests[np.isin(pool, held)])
    return held, pool[~leaked]


def check_disjoint(dataset: Dataset, pool, validation: Dataset, chosen) -> None:
    """Refuse a caller's ASR images (``validation[chosen]``) that are byte-identical to pool images.

    Raises:
      SelectionError: naming how many and how to fix it.
    """
    shared = np.isin(image_digests(validation.images[chosen]), image_digests(dataset.images[pool]))
    if shared.any():
        example = int(np.asarray(chosen)[np.flatnonzero(shared)[0]])
        raise SelectionError(
            f"{int(shared.sum())} of the {len(chosen)} images IFS drew from the validation set for its ASR loss are "
            f"identical to non-target training images (candidates), e.g. validation image {example}; they would be "
            "scored with their own self-influence. Pass a validation set disjoint from the training data (e.g. "
            "from jaxpoison.data.split_train_validation), or validation=None to hold out training images."
        )


def _asr_record(source: str, indices: np.ndarray, data: Dataset, removed: int, disjointness: str) -> dict:
    """The JSON-ready ``info["asr_set"]``: which images the ASR loss used and how they were kept apart."""
    return {"source": source, "size": int(indices.size), "indices": indices.tolist(), "data_hash": data.content_hash,
            "removed_from_pool": removed, "disjointness": disjointness}  # fmt: skip


def _asr_dataset(source: Dataset, chosen, trigger, target: int) -> Dataset:
    return triggered(source, chosen, trigger, target)


def _check_group_one(labels, quota: dict[int, int], eta: int, k: int, rate: float, note: str = "") -> None:
    """Refuse a class whose group 1 (``⌈size / η⌉`` of its ``labels``) is smaller than its quota."""
    for c, need in sorted(quota.items()):
        size = int(np.sum(labels == c))
        available = group1_size(size, eta)
        if available < need:
            raise SelectionError(
                f"class {c} has {available} candidates in group 1 ({size} images{note} / eta={eta}) but needs "
                f"{need} poisons (k={k} over {len(quota)} classes); lower eta or the rate ({rate})"
                + ("; or lower validation_size." if note else ".")
            )


def ifs_selection(
    dataset: Dataset,
    trigger,
    target: int,
    rate: float,
    config: IFSConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    model_name: str | None = None,
    validation: Dataset | None = None,
) -> Selection:
    """Choose ``round(rate · N)`` poisons by Influence-based Fair Selection (see the module docstring).

    Args:
      dataset: the clean training set.
      trigger: a jaxpoison trigger (``apply`` and ``describe``).
      target: the attack's target class; poisons come from every other class.
      rate: poisons as a fraction of the training set.
      config: an :class:`IFSConfig` (default: ``IFSConfig()``).
      seed: seeds the surrogate's random poisons and initialisation, the ASR-set draw and LiSSA.
      progress: show progress bars (surrogate epochs, influence batches).
      model_name: the surrogate architecture; a shortcut for ``config.model`` (default: ``config.model``).
      validation: data for the ASR loss, disjoint from the training set (its non-target images,
        triggered, up to ``config.validation_size``; checked byte-for-byte against the
        non-target training images). Default: ``config.validation_size`` non-target training
        images held out of the candidates (see the module docstring). Never pass the test set
        you report the attack on.

    Returns:
      A :class:`Selection`: ``scores`` are the chosen poisons' influence. ``info`` holds
      ``pool`` (size of the candidate pool: non-target training images less the held-out ASR
      set), ``quota``, ``group1_sizes``, ``thresholds`` (τ^c), ``quantiles`` (share of group 1
      kept per class), ``class_counts``, ``candidates`` / ``candidate_scores`` (every group-1
      candidate and its influence), ``surrogate_indices`` (the RS poisons), ``validation_size``,
      per-stage ``timings`` and two JSON-ready records:

      * ``asr_set``: ``source`` (``"held-out training images"`` or ``"caller's validation set"``),
        ``size``, ``indices`` (a list, into the training set or the caller's set),
        ``data_hash`` (content hash of the set those indices refer to), ``removed_from_pool``
        (pool images taken out of the candidates: the held-out ones and their exact duplicates;
        0 for a caller's set) and ``disjointness`` (how it was ensured).
      * ``lissa``: ``curvature``, ``damping``, ``damping_form``, ``effective_damping`` (λ in Hessian
        units of the solve), ``scale`` (used), ``requested_scale``, ``top_eigenvalue`` (the
        power-iteration estimate behind ``auto_scale``; ``None`` without it), ``depth``,
        ``repeats``, ``batch_size``, ``finite``, ``relative_change`` (of ‖s‖ over the last tenth
        of the steps), ``iterate_change`` (‖s_T − s_{T−b}‖/‖s_T‖ over the same span),
        ``first_norm`` / ``final_norm`` (‖s‖), ``residual`` (‖(C + λI)s − v‖/‖v‖ on
        ``residual_examples`` training examples, see :func:`lissa_residual`).

    Raises:
      SelectionError: bad arguments; group 1 of some class is smaller than its quota (checked
        before any training); a caller's validation set shares images with the pool; or LiSSA
        diverged.

    References:
      Qi Wei, Shuo He, Jiahao Zhang, Lei Feng and Bo An. *Influence-Based Fair Selection for
      Sample-Discriminative Backdoor Attacks.* Proceedings of the AAAI Conference on Artificial
      Intelligence 39(20): 21474–21481, 2025.

      Pang Wei Koh and Percy Liang. *Understanding Black-box Predictions via Influence
      Functions.* ICML 2017 (the influence of a training point that IFS scores candidates by).
    """
    config = IFSConfig() if config is None else config
    if model_name is not None:
        config = dataclasses.replace(config, model=model_name)
    start = time.perf_counter()
    pool, k = poison_budget(dataset, target, rate)
    classes = np.unique(dataset.labels[pool])
    quota = fair_quota(k, classes)
    _check_group_one(dataset.labels[pool], quota, config.eta, k, rate)
    if validation is not None and validation.image_shape != dataset.image_shape:
        raise SelectionError(
            f"validation images are {validation.image_shape} but training images are {dataset.image_shape}."
        )
    timings: dict[str, float] = {}

    # The surrogate's random poisons, then the ASR set, disjoint from every candidate.
    rs = random_selection(dataset, target, rate, seed)
    rng = np.random.default_rng([seed, 0x1F5])
    if validation is None:
        held, pool_left = asr_holdout(dataset, pool, rs.indices, config.validation_size, rng)
        val = _asr_dataset(dataset, held, trigger, target)
        asr_set = _asr_record(HELD_OUT, held, dataset, int(pool.size - pool_left.size),
                              "held-out indices and their byte-identical copies removed from the candidates")
        pool = pool_left
        _check_group_one(dataset.labels[pool], quota, config.eta, k, rate,
                         f" left after holding out {held.size} for the ASR set")  # fmt: skip
    else:
        victims = np.flatnonzero(validation.labels != target)
        if victims.size == 0:
            raise SelectionError(f"the validation data has no images outside the target class {target}.")
        chosen = np.sort(rng.choice(victims, min(config.validation_size, victims.size), replace=False))
        check_disjoint(dataset, pool, validation, chosen)
        val = _asr_dataset(validation, chosen, trigger, target)
        asr_set = _asr_record(CALLERS, chosen, validation, 0,
                              "checked: no ASR image byte-identical to a non-target training image")
    pool_labels = dataset.labels[pool]

    # 1. Surrogate on a randomly poisoned set.
    t0 = time.perf_counter()
    poisoned = poison_dataset(dataset, trigger, PoisonConfig(target=target, indices=tuple(rs.indices.tolist())))
    trainer = ProxyTrainer(config.model, config.model_kwargs, dataset, epochs=config.surrogate_epochs,
                           learning_rate=config.learning_rate, batch_size=config.batch_size)  # fmt: skip
    model = trainer.fit(poisoned.dataset, round_seed(seed, 0, 0x1F5), progress=progress, desc="IFS surrogate")
    timings["surrogate"] = time.perf_counter() - t0

    # 2. Group-based pruning on clean features.
    t0 = time.perf_counter()
    features = forward(model, dataset.subset(pool), output="features")
    groups = group_split(features.reshape(features.shape[0], -1), pool_labels, config.eta)
    group1 = pool[groups == 1]
    timings["grouping"] = time.perf_counter() - t0

    # 3. One inverse-HVP of the ASR-loss gradient, then one scoring pass over group 1.
    t0 = time.perf_counter()
    v = mean_loss_gradient(model, val, config.influence_batch_size)
    lissa_config, top = config.lissa, None
    if config.auto_scale:
        top = top_curvature_eigenvalue(model, poisoned.dataset, lissa_config, jax.random.key(seed + 1),
                                       config.curvature)  # fmt: skip
        lissa_config = dataclasses.replace(lissa_config, scale=lissa_scale_for(top, lissa_config))
    s, lissa_info = lissa_inverse_hvp(model, poisoned.dataset, v, lissa_config, jax.random.key(seed),
                                      config.curvature)  # fmt: skip
    norms = np.asarray(lissa_info.norms)
    timings["lissa"] = time.perf_counter() - t0
    if not bool(lissa_info.finite):
        raise SelectionError(
            f"LiSSA diverged (non-finite iterate): raise lissa.scale (now {lissa_config.scale}) above the largest "
            "Hessian eigenvalue, raise lissa.damping, or use curvature='gauss_newton'."
        )
    change = float(lissa_info.relative_change)
    if change > UNSETTLED:
        warnings.warn(
            f"LiSSA has not settled: ‖s‖ still changed by {100 * change:.0f} % over the last tenth of its "
            f"{config.lissa.depth} steps (‖s‖ went from {norms[:, 0].mean():.3g} to {norms[:, -1].mean():.3g}). "
            "Growth means negative curvature or too small a scale: try curvature='gauss_newton', a larger "
            "lissa.damping or lissa.scale; slow convergence needs a larger lissa.depth.",
            RuntimeWarning,
            stacklevel=2,
        )
    t0 = time.perf_counter()
    residual, residual_examples = lissa_residual(model, poisoned.dataset, s, v, lissa_config.effective_damping,
                                                 jax.random.key(seed + 2), batch_size=lissa_config.batch_size,
                                                 curvature=config.curvature)  # fmt: skip
    timings["residual"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    candidates = triggered(dataset, group1, trigger, target)
    influence = candidate_influence(model, s, candidates, config.influence_batch_size, progress)
    timings["influence"] = time.perf_counter() - t0

    # 4. Fair per-class selection.
    positions, thresholds = fair_select(influence, dataset.labels[group1], quota)
    chosen = group1[positions]
    g1_sizes = {int(c): int(np.sum(dataset.labels[group1] == c)) for c in classes}
    timings["total"] = time.perf_counter() - start
    info = {
        "method": "ifs",
        "k": k,
        "pool": int(pool.size),
        "seed": seed,
        "config": dataclasses.asdict(config),
        "quota": quota,
        "group1_sizes": g1_sizes,
        "thresholds": thresholds,
        "quantiles": {c: quota[c] / g1_sizes[c] for c in quota},
        "class_counts": {int(c): int(np.sum(dataset.labels[chosen] == c)) for c in classes},
        "candidates": group1,
        "candidate_scores": influence,
        "surrogate_indices": rs.indices,
        "validation_size": len(val),
        "asr_set": asr_set,
        "lissa": {
            "curvature": config.curvature,
            "damping": float(lissa_config.damping),
            "damping_form": lissa_config.damping_form,
            "effective_damping": lissa_config.effective_damping,
            "scale": float(lissa_config.scale),
            "requested_scale": float(config.lissa.scale),
            "top_eigenvalue": top,
            "depth": lissa_config.depth,
            "repeats": lissa_config.repeats,
            "batch_size": lissa_config.batch_size,
            "finite": True,
            "relative_change": change,
            "iterate_change": float(lissa_info.iterate_change),
            "first_norm": float(norms[:, 0].mean()),
            "final_norm": float(norms[:, -1].mean()),
            "residual": residual,
            "residual_examples": residual_examples,
        },
        "timings": timings,
        "seconds": timings["total"],
    }
    return finish(chosen, influence[positions], info)
