"""TRAK (Park et al. 2023): influence from randomly projected gradients, in pure JAX.

For each model (checkpoint) ``m``:

* ``f(z) = logit_y − logsumexp(other logits)``, the log-odds of the correct class;
* ``φ(z) = Pᵀ ∇θ f(z)``, its gradient under a random projection to ``k`` dimensions;
* ``Φ`` stacks the training features; ``K = ΦᵀΦ + λI``;
* ``Q = diag(1 − p_i)``, with ``p_i`` the probability of the correct class.

The score of training point ``i`` for query ``q`` is
``τ(q, i) = mean_m[φ_m(q)ᵀ K_m⁻¹ φ_m(z_i)] · mean_m[1 − p_{m,i}]``.
Positive scores support the query's label, as everywhere in jaxpoison.

Two projections, both unbiased for inner products (``E[P Pᵀ] = I``):

* ``"kronecker"`` (the default) projects each tracked layer's per-example gradient
  ``G = Σ_p a_p g_pᵀ`` ``[in, out]`` as ``P_aᵀ G P_g`` with Gaussian ``P_a [in, k_a]`` and
  ``P_g [out, k_g]`` (``k_a·k_g = k``) and sums the layers. It is computed as
  ``Σ_p (P_aᵀ a_p)(P_gᵀ g_p)ᵀ`` from the captured layer inputs and output gradients: neither a
  per-example gradient nor a ``D×k`` matrix is ever formed. Parameters outside Dense/Conv
  layers are left out and listed, as for EK-FAC.
* ``"dense"``: one Gaussian ``P ∈ R^{D×k}`` (entries ``N(0, 1/k)``, generated per parameter
  array) applied to the full per-example gradient from ``vmap(grad)``. It is held in memory
  when ``D·k`` floats fit ``materialize_bytes``; otherwise each batch regenerates it from the
  same keys (slower, no memory cost).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.influence.capture import capture, check_untracked, find_layers
from jaxpoison.influence.grads import per_example_grads
from jaxpoison.influence.kfac import check_finite, is_finite_real, is_integer, params_hash
from jaxpoison.influence.losses import margin_measurement
from jaxpoison.influence.scores import NON_FINITE_HINT, SIGN_CONVENTION, Scores, _check_queries, check_entry
from jaxpoison.influence.stream import collect_dataset
from jaxpoison.models import FunctionalModel
from jaxpoison.sharding import data_mesh, replicate


@dataclasses.dataclass(frozen=True)
class TrakConfig:
    """Attributes:
    projection_dim: ``k``, the dimension of the projected gradients.
    damping: ``λ`` added to the diagonal of ``ΦᵀΦ``: finite and ≥ 0 (0, the default, is
      fine: the kernel is solved by least squares).
    batch_size: examples per batch when featurising the training set.
    seed: seeds the projection (the same for every checkpoint, as in TRAK).
    materialize_bytes: keep the dense projection in memory below this size.
    projection: ``"kronecker"`` (per-layer ``P_aᵀ G P_g`` from captured inputs and output
      gradients) or ``"dense"`` (one Gaussian matrix on the full per-example gradient).
    on_untracked: ``"warn"``, ``"error"`` or ``"ignore"`` for parameters that the Kronecker
      projection leaves out (outside Dense/Conv layers).
    """

    projection_dim: int = 512
    damping: float = 0.0
    batch_size: int = 128
    seed: int = 0
    materialize_bytes: float = 2e9
    projection: str = "kronecker"
    on_untracked: str = "warn"

    def __post_init__(self):
        for name in ("projection_dim", "batch_size"):
            value = getattr(self, name)
            if not (is_integer(value) and value >= 1):
                raise InputError(f"TrakConfig.{name} must be an integer ≥ 1; got {value!r}.")
        if not (is_finite_real(self.damping) and self.damping >= 0):
            raise InputError(
                f"TrakConfig.damping must be a finite number ≥ 0 (inf zeroes every score); got {self.damping!r}."
            )
        if not is_integer(self.seed):
            raise InputError(f"TrakConfig.seed must be an integer; got {self.seed!r}.")
        if self.projection not in PROJECTIONS:
            raise InputError(f"TrakConfig.projection must be one of {PROJECTIONS}; got {self.projection!r}.")
        if not (is_finite_real(self.materialize_bytes) and self.materialize_bytes >= 0):
            raise InputError(
                f"TrakConfig.materialize_bytes must be a finite number ≥ 0; got {self.materialize_bytes!r}."
            )


PROJECTIONS = ("kronecker", "dense")


def _log_odds(logits: jax.Array, label: jax.Array) -> jax.Array:
    return -margin_measurement(logits, label)


def kronecker_dims(k: int) -> tuple[int, int]:
    """``(k_a, k_g)`` with ``k_a·k_g = k`` and ``k_g`` the largest divisor of ``k`` not above ``√k``."""
    k_g = max(d for d in range(1, int(np.sqrt(k)) + 1) if k % d == 0)
    return k // k_g, k_g


def kronecker_projections(layers, k: int, seed: int, dtype) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per layer, Gaussian ``P_a [in, k_a]`` and ``P_g [out, k_g]`` with entries ``N(0, 1/k_a)``, ``N(0, 1/k_g)``."""
    k_a, k_g = kronecker_dims(k)
    key = jax.random.key(seed)
    out = {}
    for i, layer in enumerate(layers):
        ka, kg = jax.random.split(jax.random.fold_in(key, i))
        out[layer.name] = (jax.random.normal(ka, (layer.in_dim, k_a), dtype) / np.sqrt(k_a),
                           jax.random.normal(kg, (layer.out_features, k_g), dtype) / np.sqrt(k_g))  # fmt: skip
    return out


@functools.partial(jax.jit, static_argnames=("layers",))
def _kronecker_features(model, projections, x, y, m, *, layers):
    """``Σ_layers vec(Σ_p (P_aᵀ a_p)(P_gᵀ g_p)ᵀ)`` and ``1 − p(correct)``, masked: ``[N, k + 1]``."""
    logits, captured = capture(model, list(layers), x, y, _log_odds, mask=m)
    phi = 0.0
    for layer in layers:
        a, g = captured[layer.name]
        pa, pg = projections[layer.name]
        phi = phi + jnp.einsum("npa,npb->nab", a @ pa, g @ pg).reshape(a.shape[0], -1)
    p_correct = jnp.take_along_axis(jax.nn.softmax(logits), y[:, None], axis=1)[:, 0]
    return jnp.concatenate([phi, (1.0 - p_correct)[:, None]], axis=1) * m[:, None]


def _projection_leaf(key, index: int, size: int, k: int, dtype) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(key, index), (size, k), dtype) / np.sqrt(k)


def _project(grads, projection, key, k: int) -> jax.Array:
    """``Σ_leaf g_leaf P_leaf`` for per-example gradients with a leading batch axis: ``[N, k]``."""
    leaves = jax.tree.leaves(grads)
    out = 0.0
    for i, g in enumerate(leaves):
        flat = g.reshape(g.shape[0], -1)
        p = projection[i] if projection is not None else _projection_leaf(key, i, flat.shape[1], k, flat.dtype)
        out = out + flat @ p
    return out


@functools.partial(jax.jit, static_argnames=("k",))
def _features(model, projection, key, x, y, m, *, k):
    phi = _project(per_example_grads(model.bind(), _log_odds, model.params, x, y), projection, key, k)
    logits = model(x)
    p_correct = jnp.take_along_axis(jax.nn.softmax(logits), y[:, None], axis=1)[:, 0]
    return jnp.concatenate([phi, (1.0 - p_correct)[:, None]], axis=1) * m[:, None]


def _projection(model: FunctionalModel, config: TrakConfig):
    key = jax.random.key(config.seed)
    leaves = jax.tree.leaves(model.params)
    total = sum(leaf.size for leaf in leaves) * config.projection_dim * leaves[0].dtype.itemsize
    if total > config.materialize_bytes:
        return None, key
    k = config.projection_dim
    return [_projection_leaf(key, i, leaf.size, k, leaf.dtype) for i, leaf in enumerate(leaves)], key


def trak_features(
    model: FunctionalModel, dataset: Dataset, config: TrakConfig = TrakConfig(), *,
    mesh: jax.sharding.Mesh | None = None, progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Projected gradient features ``[N, k]`` and ``1 − p(correct)`` ``[N]`` of every example."""
    mesh = data_mesh() if mesh is None else mesh
    check_entry(model, dataset, config, TrakConfig, "the dataset is empty; TRAK features need at least one example.")
    if config.projection == "kronecker":
        layers, untracked = find_layers(model)
        if not layers:
            raise InputError("the Kronecker TRAK projection needs Dense or Conv layers; this model has none "
                             "(use TrakConfig(projection='dense')).")  # fmt: skip
        check_untracked(untracked, config.on_untracked)
        dtype = jax.tree.leaves(model.params)[0].dtype
        projections = kronecker_projections(layers, config.projection_dim, config.seed, dtype)
        replicated, projections = replicate(mesh, (model, projections))
        step = functools.partial(_kronecker_features, replicated, projections, layers=tuple(layers))
    else:
        projection, key = _projection(model, config)
        replicated, projection = replicate(mesh, (model, projection))
        step = functools.partial(_features, replicated, projection, key, k=config.projection_dim)
    out = collect_dataset(
        lambda b, x, y, m: step(x, y, m),
        dataset, config.batch_size, mesh, desc="TRAK features", progress=progress, axis=0,
    )  # fmt: skip
    # NaN features would make the least-squares solve fail or return NaN scores.
    check_finite(out, "the TRAK features", NON_FINITE_HINT, InputError)
    return out[:, :-1], out[:, -1]


def trak_scores(
    models: FunctionalModel | Sequence[FunctionalModel],
    train: Dataset,
    query_images: np.ndarray,
    query_labels: np.ndarray,
    config: TrakConfig = TrakConfig(),
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> Scores:
    """TRAK scores ``[Q, N]`` of every training point for every query, over one or several checkpoints."""
    models = [models] if isinstance(models, FunctionalModel) else list(models)
    if not models:
        raise InputError("trak_scores needs at least one model.")
    if not all(isinstance(m, FunctionalModel) for m in models):
        raise InputError("trak_scores takes a FunctionalModel or a sequence of them (jaxpoison.models.to_functional).")
    images, labels = _check_queries(query_images, query_labels, train)
    queries = Dataset(images, labels, train.class_names, train.mean, train.std, train.provenance, kind=train.kind)
    kernel_part, weights = 0.0, 0.0
    for model in models:
        phi, one_minus_p = trak_features(model, train, config, mesh=mesh, progress=progress)
        phi_q, _ = trak_features(model, queries, config, mesh=mesh, progress=False)  # padded to one batch
        phi, phi_q = phi.astype(np.float64), phi_q.astype(np.float64)
        kernel = phi.T @ phi + config.damping * np.eye(phi.shape[1])
        kernel_part = kernel_part + phi_q @ np.linalg.lstsq(kernel, phi.T, rcond=None)[0]
        weights = weights + one_minus_p
    values = (kernel_part / len(models)) * (weights / len(models))[None, :]
    check_finite(values, "the TRAK scores", NON_FINITE_HINT, InputError)
    meta = {
        "sign": SIGN_CONVENTION,
        "measurement": "log-odds of the query label (TRAK)",
        "strategy": "trak",
        "projection_dim": config.projection_dim,
        "projection": config.projection,
        "damping": config.damping,
        "checkpoints": len(models),
        "params_hash": [params_hash(m.params) for m in models],
        "data_hash": train.content_hash,
        "n_train": len(train),
        "n_queries": int(images.shape[0]),
    }
    return Scores(values, meta)
