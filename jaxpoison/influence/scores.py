"""Influence scores: many queries against every training point in one pass.

``score(q, n) = ⟨∇θ m(z_q), (F + λI)⁻¹ ∇θ ℓ(z_n)⟩`` restricted to the tracked layers,
where ``m`` is the query measurement, ``ℓ`` the training loss and ``F`` the K-FAC,
EK-FAC or identity curvature. **Positive = the training point supports the query's
prediction** (up-weighting it lowers the measurement). Scores are not divided by
the number of training points (kronfluence's convention).

The work is split so the training set is read once, whatever the number of queries:

1. the query gradients are formed and preconditioned once (``[Q, in_dim, out]`` per layer);
2. the training set is streamed in batches; each batch's layer inputs ``a`` and
   output gradients ``g`` are contracted against all ``Q`` preconditioned queries.
   Dense layers use ``Σ_o g_o (aᵀ W_q)_o`` without forming per-example gradients;
   convolutions form the per-example gradient ``Σ_p a_p g_pᵀ`` once and reuse it for
   all queries, which is cheaper than a per-position contraction per query.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.distributed import is_writer
from jaxpoison.errors import ArtifactError, InputError
from jaxpoison.fileio import atomic_write_text
from jaxpoison.influence.capture import (
    Layer,
    capture,
    check_untracked,
    find_layers,
    layer_gradient,
    per_example_layer_gradients,
)
from jaxpoison.influence.kfac import (
    FactorError,
    Factors,
    array_sha256,
    check_damping,
    check_finite,
    check_model,
    check_params,
    is_integer,
    layer_damping,
    params_hash,
    precondition,
    rotated_gradients,
)
from jaxpoison.influence.losses import LogitLoss, cross_entropy, get_measurement
from jaxpoison.influence.precision import check_dtype, einsum
from jaxpoison.influence.stream import collect_dataset
from jaxpoison.models import FunctionalModel
from jaxpoison.sharding import data_mesh, replicate

SIGN_CONVENTION = "positive = the training point supports the query's prediction (lowers its measurement)"
# Why scores can be non-finite when every input was finite; said whenever they are refused.
NON_FINITE_HINT = (
    "the model or data produced non-finite values (a diverged model with overflowing logits, or a damping too small "
    "for zero eigenvalues); check the model and data, or raise the damping"
)


# The one default damping of the library (scores, detection configs, run presets). kronfluence's
# 1e-8 (PAPER_DAMPING in the paper presets) divides directions that no training example spans by
# almost nothing whenever a layer has more inputs than there are training points; 1e-3 keeps
# those directions bounded and leaves the well-determined ones unchanged.
DEFAULT_DAMPING = 1e-3


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """How to score.

    Attributes:
      measurement: the query function: ``"margin"`` (kronfluence's −margin),
        ``"cross_entropy"``, or a per-example ``f(logits, label) -> scalar``.
      damping: λ added to the curvature eigenvalues (default :data:`DEFAULT_DAMPING`);
        ``None`` = 0.1 × mean eigenvalue per layer. Ignored by the identity strategy.
      batch_size: training examples per batch of the scoring pass.
      on_untracked: ``"warn"``, ``"error"`` or ``"ignore"`` for parameters no layer covers.
      query_rank: keep each layer's preconditioned query gradient ``[in, out]`` as its best
        rank-``r`` approximation ``U Vᵀ`` (an SVD; ``None``: the full matrix). A training example's
        score is then ``Σ_k Σ_p (a_pᵀ u_k)(g_pᵀ v_k)`` without its per-example gradient, wherever
        that costs fewer multiply-adds than forming the gradient (a rank at or above
        ``min(in, out)`` is exact).
      dtype: the dtype of the scoring contractions: ``"float32"`` or ``"bfloat16"`` (layer inputs,
        output gradients and queries are cast to it; products accumulate in float32). ``None``:
        the model's own dtype, unchanged. The curvature's eigendecomposition is float64 either way.
    """

    measurement: str | Callable = "margin"
    damping: float | None = DEFAULT_DAMPING
    batch_size: int = 128
    on_untracked: str = "warn"
    query_rank: int | None = None
    dtype: str | None = None

    def __post_init__(self):
        get_measurement(self.measurement)
        check_damping(self.damping, "ScoreConfig.damping")
        if not (is_integer(self.batch_size) and self.batch_size >= 1):
            raise InputError(f"ScoreConfig.batch_size must be an integer ≥ 1; got {self.batch_size!r}.")
        if self.query_rank is not None and not (is_integer(self.query_rank) and self.query_rank >= 1):
            raise InputError(f"ScoreConfig.query_rank must be an integer ≥ 1 (or None for full rank); got "
                             f"{self.query_rank!r}.")  # fmt: skip
        check_dtype(self.dtype, "ScoreConfig.dtype")

    @property
    def measurement_name(self) -> str:
        m = self.measurement
        return m if isinstance(m, str) else getattr(m, "__name__", "custom")


class Scores(NamedTuple):
    """A score matrix ``values [Q, N]`` (or ``[N]`` for self-influence) and what it means."""

    values: np.ndarray
    meta: dict


def _layers(model: FunctionalModel, factors: Factors | None, on_untracked: str) -> tuple[Layer, ...]:
    if factors is not None:
        return factors.layers
    layers, untracked = find_layers(model)
    check_untracked(untracked, on_untracked)
    return tuple(layers)


def check_images(
    images: Any, image_shape: tuple[int, ...], what: str = "query images", kind: str = "image"
) -> np.ndarray:
    """Pixel-space images ``[Q, *image_shape]`` as float32; one image may drop the ``Q`` axis.

    Refuses, naming ``what``: integer or other non-floating dtypes (uint8 pixels in [0, 255]
    would give scores hundreds of times too large), another per-image shape, no images at
    all, and NaN or Inf (which give NaN scores that flag nothing). With ``kind="tokens"`` the
    inputs must instead be non-negative integer ids (returned as int32).
    """
    if kind == "tokens":
        return _check_tokens(images, image_shape, what)
    try:
        array = np.asarray(images)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise InputError(f"{what} cannot be read as one array ({e}); pass a [Q, H, W, C] float array.") from e
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"{what} have dtype {array.dtype}; they must be floating-point pixels in [0, 1] like the training images. "
            "Scale integer images first: images.astype(np.float32) / 255."
        )
    if array.ndim == len(image_shape):
        array = array[None]
    if array.shape[1:] != tuple(image_shape):
        raise InputError(
            f"{what} have shape {array.shape} but must be [Q, {', '.join(map(str, image_shape))}]: Q images of the "
            f"training image shape {tuple(image_shape)} (NHWC), batched along the first axis."
        )
    if array.shape[0] == 0:
        raise InputError(f"no {what}: got an empty array of shape {array.shape}; pass at least one image.")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, refused just below
        array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))
        raise InputError(
            f"{what} contain NaN or Inf (after conversion to float32) in image(s) {bad[:8].tolist()}; "
            "pass finite pixel values in [0, 1]."
        )
    return array


def _check_tokens(tokens: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(tokens)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what} must be integer token ids like the training set's; got dtype {array.dtype}.")
    if array.ndim == len(shape):
        array = array[None]
    if array.shape[1:] != tuple(shape) or array.shape[0] == 0:
        raise InputError(f"{what} have shape {array.shape} but must be [Q, {', '.join(map(str, shape))}] with Q ≥ 1.")
    if array.min() < 0 or array.max() > np.iinfo(np.int32).max:
        raise InputError(f"{what} must be token ids in [0, 2**31); got range [{array.min()}, {array.max()}].")
    return array.astype(np.int32)


def check_labels(labels: Any, count: int, num_classes: int, what: str = "query labels") -> np.ndarray:
    """Integer labels ``[count]`` in ``[0, num_classes)`` as int32; float and bool labels are refused, not truncated."""
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} cannot be read as one array ({e}); pass a 1-D integer array.") from e
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"{what} have dtype {array.dtype}; they must be integer class indices in [0, {num_classes}). "
            "Float labels are not truncated: convert whole-number labels with labels.astype(np.int32)."
        )
    if array.ndim > 1:
        raise InputError(f"{what} must be a 1-D array [Q]; got shape {array.shape}.")
    array = array.reshape(-1)
    if array.shape[0] != count:
        raise InputError(f"{count} query images but {array.shape[0]} {what}; pass one label per image.")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise InputError(
            f"{what} must lie in [0, {num_classes}) for the {num_classes}-class training set; "
            f"got {array.min()}..{array.max()}."
        )
    return array.astype(np.int32)


def _check_queries(images: Any, labels: Any, train: Dataset) -> tuple[np.ndarray, np.ndarray]:
    images = check_images(images, train.image_shape, kind=train.kind)
    return images, check_labels(labels, images.shape[0], train.num_classes)


@functools.partial(jax.jit, static_argnames=("layers", "measurement"))
def _query_gradients(model, x, y, *, layers, measurement):
    _, captured = capture(model, list(layers), x, y, measurement)
    return {name: per_example_layer_gradients(a, g) for name, (a, g) in captured.items()}


def query_gradients(
    model: FunctionalModel, layers, images: np.ndarray, labels: np.ndarray, measurement: LogitLoss
) -> dict[str, jax.Array]:
    """Per-query layer gradients ``{name: [Q, in_dim, out]}`` of the measurement (pixel-space images)."""
    return _query_gradients(model, jnp.asarray(images), jnp.asarray(labels), layers=tuple(layers),
                            measurement=measurement)  # fmt: skip


def gradients_from_pytree(grads: Any, layers) -> dict[str, jax.Array]:
    """Layer gradients ``{name: [..., in_dim, out]}`` from a parameter-gradient pytree.

    Use it for a measurement that is not a per-example function of logits, e.g.
    ``jax.grad(f)(params)`` of a mean loss over a validation set (then add a leading
    query axis with ``[None]``).
    """
    return {layer.name: layer_gradient(grads, layer) for layer in layers}


def _query_layout(layer: Layer, w: jax.Array) -> jax.Array:
    """Lay out preconditioned queries for the training-side contraction, once per scoring run.

    Dense layers get ``[in, Q, out]``, so a batch's inputs multiply all queries in one
    plain matrix product ``[N, in] @ [in, Q·out]`` with no per-batch transpose of the
    (large) query tensor; convolutions keep ``[Q, in, out]``.
    """
    return jnp.swapaxes(w, 0, 1) if layer.kind == "dense" else w


class LowRankQuery(NamedTuple):
    """A layer's queries as rank-``r`` factors, ``W_q = left_q · right_qᵀ``.

    Attributes:
      left: ``[in, Q, r]``: left singular vectors scaled by their singular values.
      right: ``[out, Q, r]``: right singular vectors.
    """

    left: jax.Array
    right: jax.Array


def low_rank_queries(grads: dict[str, Any], rank: int) -> dict[str, LowRankQuery]:
    """The best rank-``rank`` factors of each query's ``[in, out]`` layer gradient (an SVD in float64).

    A rank at or above ``min(in, out)`` keeps every singular value, so the factors are exact.
    """
    out = {}
    for name, w in grads.items():
        dtype = w.dtype
        u, sv, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)  # [Q, in, k], [Q, k], [Q, k, out]
        r = min(rank, sv.shape[-1])
        left = u[..., :r] * sv[:, None, :r]
        right = np.swapaxes(vt[:, :r, :], 1, 2)
        out[name] = LowRankQuery(jnp.asarray(np.swapaxes(left, 0, 1), dtype), jnp.asarray(np.swapaxes(right, 0, 1),
                                                                                             dtype))  # fmt: skip
    return out


def factored_is_cheaper(positions: int, in_dim: int, out: int, queries: int, rank: int) -> bool:
    """Whether scoring a layer from rank-``r`` query factors costs fewer multiply-adds per example
    than forming the per-example gradient and contracting it with every full query.

    Factored: ``P·(in + out)·Q·r``. Gradient first: ``P·in·out`` (none for a Dense layer
    applied once, whose score is ``(aᵀW)·g``) plus ``Q·in·out``.
    """
    factored = positions * (in_dim + out) * queries * rank
    gradient = (0 if positions == 1 else positions * in_dim * out) + queries * in_dim * out
    return factored < gradient


def _contract(layer: Layer, a: jax.Array, g: jax.Array, w: jax.Array | LowRankQuery, dtype: str | None) -> jax.Array:
    """Scores ``[Q, N]`` of laid-out preconditioned queries ``w`` against a batch's ``(a, g)``."""
    if isinstance(w, LowRankQuery):
        _, q, r = w.left.shape
        if factored_is_cheaper(a.shape[1], a.shape[2], g.shape[2], q, r):
            # Σ_p Σ_k (a_pᵀ u_qk)(g_pᵀ v_qk): the per-example gradient is never formed
            au = einsum("npi,iqr->npqr", a, w.left, dtype=dtype)
            gv = einsum("npo,oqr->npqr", g, w.right, dtype=dtype)
            return jnp.einsum("npqr,npqr->qn", au, gv)
        w = jnp.einsum("iqr,oqr->iqo", w.left, w.right)  # rebuilt per batch: Q·in·out·r, small beside the batch
        w = w if layer.kind == "dense" else jnp.swapaxes(w, 0, 1)
    if layer.kind == "dense":
        if a.shape[1] == 1:  # (aᵀ W_q) · g without forming the per-example gradient
            aw = einsum("ni,iqo->nqo", a[:, 0], w, dtype=dtype)
            return einsum("nqo,no->qn", aw, g[:, 0], dtype=dtype)
        return einsum("nio,iqo->qn", per_example_layer_gradients(a, g), w, dtype=dtype)
    return einsum("nio,qio->qn", per_example_layer_gradients(a, g), w, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("layers", "dtype"))
def _pairwise_batch(model, w, x, y, m, *, layers, dtype):
    _, captured = capture(model, list(layers), x, y, cross_entropy, mask=m)
    return sum(_contract(layer, *captured[layer.name], w[layer.name], dtype) for layer in layers)


@functools.partial(jax.jit, static_argnames=("layers",))
def _self_batch(model, blocks, x, y, m, *, layers):
    _, captured = capture(model, list(layers), x, y, cross_entropy, mask=m)
    total = 0.0
    for layer in layers:
        a, g = captured[layer.name]
        if blocks is None:  # identity: the squared norm of the per-example gradient
            sq_a, sq_g = (a[:, 0] ** 2, g[:, 0] ** 2) if a.shape[1] == 1 else (None, None)
            total += (sq_a.sum(-1) * sq_g.sum(-1) if sq_a is not None
                      else (per_example_layer_gradients(a, g) ** 2).sum((1, 2)))  # fmt: skip
            continue
        qa, qs, inv = blocks[layer.name]
        if a.shape[1] == 1:  # Dense: the rotated square is an outer product of squares
            total += jnp.einsum("ni,io,no->n", (a[:, 0] @ qa) ** 2, inv, (g[:, 0] @ qs) ** 2)
        else:
            total += jnp.einsum("nio,io->n", rotated_gradients(a, g, qa, qs) ** 2, inv)
    return total


def _meta(model, train, factors, config: ScoreConfig, strategy: str, **extra) -> dict:
    return {
        "sign": SIGN_CONVENTION,
        "measurement": config.measurement_name,
        "train_loss": "cross_entropy (per example, summed)",
        "strategy": strategy,
        "damping": config.damping,
        "fisher": None if factors is None else factors.meta.get("fisher"),
        "params_hash": params_hash(model.params),
        "data_hash": train.content_hash,
        "n_train": len(train),
        "untracked": None if factors is None else factors.meta.get("untracked"),
        **extra,
    }


def _strategy(factors: Factors | None) -> str:
    return "identity" if factors is None else factors.meta["strategy"]


def check_factors_match(factors: Factors | None, model: FunctionalModel, train: Dataset) -> None:
    """Refuse factors fitted for other parameters or another training set, or holding NaN/Inf."""
    if factors is None:
        return
    if not isinstance(factors, Factors):
        raise InputError(f"factors must be Factors (from fit_factors or load_factors) or None; got {type(factors)}.")
    if factors.meta.get("params_hash") != params_hash(model.params):
        raise FactorError("the factors were fitted for other model parameters; refit them for this model.")
    if factors.meta.get("data_hash") != train.content_hash:
        raise FactorError(
            "the factors were fitted on another training set (data hash "
            f"{factors.meta.get('data_hash')} vs {train.content_hash}); refit them on this dataset."
        )
    check_finite(factors.blocks, "the factors")


def check_entry(model: FunctionalModel, dataset: Dataset, config: Any, config_type: type, empty: str) -> None:
    """The checks every influence entry point runs before any computation: its config's type, a
    non-empty ``dataset`` (``empty`` says why one is needed), and floating, finite parameters of a
    model that takes these images."""
    if not isinstance(config, config_type):
        raise InputError(f"config must be a {config_type.__name__}; got {type(config).__name__}.")
    if len(dataset) == 0:
        raise InputError(empty)
    check_params(model.params)
    check_model(model, dataset.image_shape, dataset.images.dtype)


def check_score_inputs(model: FunctionalModel, train: Dataset, factors: Factors | None, config: ScoreConfig) -> None:
    """The checks every scoring entry point runs before any computation."""
    check_entry(model, train, config, ScoreConfig, "the training set is empty; there is nothing to score.")
    check_factors_match(factors, model, train)


def pairwise_scores(
    model: FunctionalModel,
    train: Dataset,
    query_images: np.ndarray,
    query_labels: np.ndarray,
    factors: Factors | None = None,
    config: ScoreConfig = ScoreConfig(),
    *,
    query_grads: dict[str, jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> Scores:
    """Influence of every training point on every query, in one pass over ``train``.

    Args:
      model: the functional model.
      train: the training set (pixel space; normalised with its own constants).
      query_images: ``[Q, H, W, C]`` pixel-space queries (any images, e.g. transformed
        test points); ``query_labels``: ``[Q]`` the labels they are measured against.
      factors: fitted K-FAC/EK-FAC factors, or ``None`` for the identity (plain
        gradient dot products).
      config: measurement, damping, batch size.
      query_grads: precomputed query layer gradients (then images/labels only name the queries).
      mesh: data mesh (default: all devices); the training axis is sharded.
      progress: show a progress bar.

    Returns:
      :class:`Scores` with ``values [Q, N]`` and metadata.
    """
    mesh = data_mesh() if mesh is None else mesh
    check_score_inputs(model, train, factors, config)
    images, labels = _check_queries(query_images, query_labels, train)
    layers = _layers(model, factors, config.on_untracked)
    if query_grads is None:
        query_grads = query_gradients(model, layers, images, labels, get_measurement(config.measurement))
    check_finite(query_grads, "the query gradients", NON_FINITE_HINT, InputError)
    preconditioned = query_grads if factors is None else precondition(factors, query_grads, config.damping)
    if config.query_rank is None:
        laid_out = {layer.name: _query_layout(layer, preconditioned[layer.name]) for layer in layers}
    else:
        laid_out = low_rank_queries({layer.name: preconditioned[layer.name] for layer in layers}, config.query_rank)
    laid_out = replicate(mesh, laid_out)
    replicated = replicate(mesh, model)
    values = collect_dataset(
        lambda b, x, y, m: _pairwise_batch(replicated, laid_out, x, y, m, layers=tuple(layers), dtype=config.dtype),
        train, config.batch_size, mesh, desc=f"scoring {images.shape[0]} queries", progress=progress,
    )  # fmt: skip
    check_finite(values, "the influence scores", NON_FINITE_HINT, InputError)
    meta = _meta(model, train, factors, config, _strategy(factors), n_queries=int(images.shape[0]),
                 query_labels=labels.tolist(), query_rank=config.query_rank, dtype=config.dtype)  # fmt: skip
    return Scores(values, meta)


def self_scores(
    model: FunctionalModel,
    train: Dataset,
    factors: Factors | None = None,
    config: ScoreConfig = ScoreConfig(measurement="cross_entropy"),
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> Scores:
    """Self-influence ``⟨∇ℓ(z_n), (F + λI)⁻¹ ∇ℓ(z_n)⟩`` of every training point (``values [N]``).

    Uses the training loss on both sides (``config.measurement`` is recorded but the
    cross-entropy is used, as a point's self-influence is about its own loss).
    """
    mesh = data_mesh() if mesh is None else mesh
    check_score_inputs(model, train, factors, config)
    layers = _layers(model, factors, config.on_untracked)
    replicated = replicate(mesh, model)
    blocks = None
    if factors is not None:
        blocks = {}
        for layer in layers:
            block = factors.blocks[layer.name]
            lam = block["eigenvalues"]
            inverse = 1.0 / (lam + layer_damping(lam, config.damping))
            blocks[layer.name] = (block["a_eigvecs"], block["s_eigvecs"], inverse)
        blocks = replicate(mesh, blocks)
    values = collect_dataset(
        lambda b, x, y, m: _self_batch(replicated, blocks, x, y, m, layers=tuple(layers)),
        train, config.batch_size, mesh, desc="self-influence", progress=progress,
    )  # fmt: skip
    check_finite(values, "the self-influence scores", NON_FINITE_HINT, InputError)
    meta = _meta(model, train, factors, dataclasses.replace(config, measurement="cross_entropy"),
                 _strategy(factors), n_queries="self")  # fmt: skip
    return Scores(values, meta)


# --------------------------------------------------------------------------- persistence


def save_scores(directory: str | os.PathLike, scores: Scores) -> None:
    """Write ``values`` with Orbax, then ``scores.json`` (metadata and the values' SHA-256) last and atomically."""
    from jaxpoison.training.checkpoint import save_tree

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if is_writer():
        (directory / "scores.json").unlink(missing_ok=True)  # a crash before the end leaves no valid-looking scores
    values = np.asarray(scores.values)
    save_tree(directory / "values", {"values": values})
    atomic_write_text(directory / "scores.json", json.dumps({"meta": scores.meta, "sha256": array_sha256(values)},
                                                            indent=2))  # fmt: skip


def load_scores(directory: str | os.PathLike) -> Scores:
    """Read scores written by :func:`save_scores`, verifying the values against their recorded hash.

    Raises:
      ArtifactError: ``scores.json`` missing or unreadable, the values unreadable, or values that
        are not the ones the record describes.
    """
    from jaxpoison.training.checkpoint import load_tree

    directory = Path(directory).absolute()
    try:
        record = json.loads((directory / "scores.json").read_text())
        meta, digest = record["meta"], record["sha256"]
    except FileNotFoundError:
        raise ArtifactError(f"no scores in {directory} (scores.json missing); compute them again.") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{directory / 'scores.json'} is unreadable or from an older jaxpoison "
                            f"({type(e).__name__}); compute the scores again.") from None  # fmt: skip
    values = np.asarray(load_tree(directory / "values", what="scores")["values"])
    if array_sha256(values) != digest:
        raise ArtifactError(f"the score values in {directory} are not the ones scores.json records; compute them "
                            "again.")  # fmt: skip
    return Scores(values, meta)
