"""K-FAC and EK-FAC curvature factors: fitting, persistence and preconditioning.

For a tracked layer with per-position inputs ``a`` (``[in_dim]``, bias column
included) and output gradients ``g`` (``[out]``), the per-example gradient is
``G = Σ_p a_p g_pᵀ`` (``[in_dim, out]``, the kernel's layout). The Fisher block of the
layer, ``E[vec G vec Gᵀ]``, is approximated by:

* **K-FAC**: ``A ⊗ S`` with ``A = E_p,n[a aᵀ]`` (inputs averaged over positions) and
  ``S = E_n[Σ_p g gᵀ]`` (output gradients summed over positions), the KFC
  convention for convolutions; for a Dense layer and one example this is exact.
  In the eigenbases ``A = Q_A diag(α) Q_Aᵀ``, ``S = Q_S diag(σ) Q_Sᵀ``, the
  eigenvalues of the block are ``α σᵀ``.
* **EK-FAC** (George et al. 2018): the same eigenbases, with the eigenvalues
  replaced by the exact second moments in that basis,
  ``Λ = E_n[(Q_Aᵀ G_n Q_S)²]`` (elementwise square).

Preconditioning a gradient ``G`` by the damped inverse is
``Q_A [(Q_Aᵀ G Q_S) / (Λ + λ)] Q_Sᵀ``.

The fit is three stages: covariances (one pass), eigendecompositions (float64, on
the host, with a deterministic sign per eigenvector), and for EK-FAC the Lambda
pass. Labels are sampled from the model (true Fisher) or taken from the data
(empirical Fisher). For Dense layers the Lambda pass never forms a per-example
gradient: ``(Q_Aᵀ a)² ((Q_Sᵀ g)²)ᵀ`` summed over the batch is one matrix product.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.distributed import barrier, is_writer
from jaxpoison.errors import ArtifactError, InputError, warn_recovery
from jaxpoison.fileio import atomic_write_text
from jaxpoison.influence.capture import (
    Layer,
    capture,
    check_untracked,
    find_layers,
    per_example_layer_gradients,
)
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.influence.precision import check_dtype, einsum
from jaxpoison.influence.stream import reduce_dataset
from jaxpoison.models import FunctionalModel
from jaxpoison.sharding import data_mesh, replicate, to_host

STRATEGIES = ("kfac", "ekfac")
FISHER_TYPES = ("true", "empirical")


class FactorError(InputError):
    """Factors are invalid, or do not belong to the model / data they are used with."""


class FactorArtifactError(FactorError, ArtifactError):
    """Saved factors are missing, damaged, or were written for other inputs."""


# The format of factors.json; format 1 (no content hashes) cannot be verified and is refused.
FACTORS_FORMAT = 2


def is_integer(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool: what counts, sizes and seeds must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_finite_real(value: Any) -> bool:
    """A finite real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def check_damping(damping: Any, where: str = "damping") -> None:
    """Refuse a damping that is not ``None`` or a finite number > 0.

    ``inf`` would zero every score and ``0`` divides by the zero eigenvalues of
    rank-deficient factors; both give numbers that look like results.
    """
    if damping is not None and not (is_finite_real(damping) and damping > 0):
        raise InputError(
            f"{where} must be a finite number > 0, or None for 0.1 × the mean eigenvalue of each layer; "
            f"got {damping!r}."
        )


@dataclasses.dataclass(frozen=True)
class FactorConfig:
    """How to fit curvature factors.

    Attributes:
      strategy: ``"ekfac"`` or ``"kfac"``.
      fisher: ``"true"`` (labels sampled from the model, seeded) or ``"empirical"``
        (the dataset's labels).
      batch_size: examples per batch of the streaming passes.
      max_examples: use only the first ``max_examples`` training examples (``None``: all).
      seed: seeds the sampled labels.
      on_untracked: ``"warn"``, ``"error"`` or ``"ignore"`` for parameters no factor covers.
      dtype: the dtype of the covariance and Lambda contractions, ``"float32"`` or ``"bfloat16"``
        (products accumulate in float32); ``None``: the model's own. The eigendecomposition is
        float64 either way.
    """

    strategy: str = "ekfac"
    fisher: str = "true"
    batch_size: int = 128
    max_examples: int | None = None
    seed: int = 0
    on_untracked: str = "warn"
    dtype: str | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise InputError(f"unknown factor strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
        if self.fisher not in FISHER_TYPES:
            raise InputError(f"unknown fisher {self.fisher!r}; choose 'true' or 'empirical'.")
        for name, value in (("batch_size", self.batch_size), ("max_examples", self.max_examples)):
            if not (value is None and name == "max_examples") and not (is_integer(value) and value >= 1):
                raise InputError(f"FactorConfig.{name} must be an integer ≥ 1; got {value!r}.")
        if not is_integer(self.seed):
            raise InputError(f"FactorConfig.seed must be an integer; got {self.seed!r}.")
        check_dtype(self.dtype, "FactorConfig.dtype")

    def sums_hash(self) -> str:
        """SHA-256 (16 hex chars) of the fields the fitted sums depend on (not ``on_untracked``)."""
        fields = dataclasses.asdict(self)
        fields.pop("on_untracked")
        if fields["dtype"] is None:  # sums fitted before the field existed are the model-dtype ones
            fields.pop("dtype")
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=int).encode()).hexdigest()[:16]


class Factors(NamedTuple):
    """Fitted factors.

    Attributes:
      layers: the tracked layers, in model order.
      blocks: ``{layer name: {"a_cov", "s_cov", "a_eigvecs", "s_eigvecs", "eigenvalues"}}``;
        ``eigenvalues`` is ``[in_dim, out]``: Λ for EK-FAC, ``α σᵀ`` for K-FAC.
      meta: strategy, fisher, counts, hashes of the parameters and data, untracked names.
    """

    layers: tuple[Layer, ...]
    blocks: dict[str, dict[str, jax.Array]]
    meta: dict


def params_hash(params: Any) -> str:
    """SHA-256 (16 hex chars) of every parameter array, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        leaf = np.asarray(leaf)
        h.update(str((leaf.shape, leaf.dtype.str)).encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def array_sha256(array: Any) -> str:
    """SHA-256 (hex) of an array's shape, dtype and bytes."""
    array = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(str((array.shape, array.dtype.str)).encode())
    h.update(array.tobytes())
    return h.hexdigest()


FINITE_BLOCK = 1 << 20  # elements per block of a host-side finiteness check


def _all_finite(leaf) -> bool:
    if isinstance(leaf, np.ndarray):  # on the host already: checking it on a device would copy it there
        flat = leaf.reshape(-1)  # checked in blocks, so a large score matrix needs no mask of its own size
        return all(bool(np.isfinite(flat[i : i + FINITE_BLOCK]).all()) for i in range(0, flat.size, FINITE_BLOCK))
    return bool(jnp.all(jnp.isfinite(leaf)))


def check_finite(tree: Any, what: str, hint: str = "the model may have diverged", error: type = FactorError) -> None:
    """Raise ``error`` (a :class:`FactorError` by default) if any leaf of ``tree`` holds NaN or Inf."""
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
           if not _all_finite(leaf)]  # fmt: skip
    if bad:
        where = f" in {', '.join(bad[:8])}" if any(bad) else ""  # a bare array has the empty path
        raise error(f"{what} contain NaN or Inf{where}; {hint}.")


def check_params(params: Any) -> None:
    """Refuse parameters that are not all floating point and finite, naming the offending leaves.

    Influence differentiates through every parameter, and the gradient of an integer leaf
    is silently zero (or float0), so an int32 model would score without complaint.
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise InputError("the model has no parameters; pass the params produced by to_functional (or by training).")
    bad = [f"{jax.tree_util.keystr(path)} ({jnp.result_type(leaf)})" for path, leaf in leaves
           if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]  # fmt: skip
    if bad:
        raise InputError(
            f"model parameters must be floating point; not floating: {', '.join(bad[:8])}. Influence needs their "
            "gradients: cast them, e.g. jax.tree.map(lambda a: a.astype(jnp.float32), params)."
        )
    check_finite(params, "the model parameters")


def check_model(model: FunctionalModel, image_shape: tuple[int, ...], dtype=jnp.float32) -> None:
    """Refuse parameters that do not fit the model's structure, or inputs it cannot take.

    Runs the model abstractly (``jax.eval_shape``, no computation) on one example of
    ``image_shape`` and ``dtype`` (the dataset's: int32 for token ids).
    """
    if not isinstance(model, FunctionalModel):
        raise InputError(f"expected a jaxpoison FunctionalModel; got {type(model).__name__}. Build one with "
                         "jaxpoison.models.to_functional, from_linen, from_equinox or from_apply.")  # fmt: skip
    try:
        example = jax.ShapeDtypeStruct((1, *image_shape), dtype)
        out = jax.eval_shape(lambda m, x: m(x), model, example)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise InputError(
            f"the parameters do not fit the model, or the model cannot take {tuple(image_shape)} images: {e}. "
            "Pass the params/state produced by to_functional (or by training) for this very model."
        ) from e
    if len(out.shape) != 2:
        raise InputError(f"the model must return logits [N, classes]; it returned shape {out.shape}.")


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 eigendecomposition with eigenvalues ≥ 0 and a fixed sign per eigenvector."""
    values, vectors = np.linalg.eigh(np.asarray(matrix, np.float64))
    # Deterministic signs: the largest-magnitude entry of each eigenvector is positive.
    pivot = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    vectors = vectors * np.where(pivot < 0, -1.0, 1.0)
    return np.clip(values, 0.0, None), vectors


def _capture_batch(model, key, x, y, m, layers, fisher):
    sample_key = key if fisher == "true" else None
    _, captured = capture(model, list(layers), x, y, cross_entropy, sample_key=sample_key, mask=m)
    return captured


_STATIC = ("layers", "fisher", "dtype")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _covariance_step(acc, model, key, x, y, m, *, layers, fisher, dtype):
    """Add a batch's Σ a aᵀ / P (inputs averaged over positions) and Σ g gᵀ to the accumulators."""
    captured = _capture_batch(model, key, x, y, m, layers, fisher)
    out = {}
    for layer in layers:
        a, g = captured[layer.name]
        out[layer.name] = {
            "a": acc[layer.name]["a"] + einsum("npi,npj->ij", a, a, dtype=dtype) / a.shape[1],
            "s": acc[layer.name]["s"] + einsum("npo,npq->oq", g, g, dtype=dtype),
        }
    return out


@functools.partial(jax.jit, static_argnames=_STATIC)
def _lambda_step(acc, model, rotations, key, x, y, m, *, layers, fisher, dtype):
    """Add a batch's Σ_n (Q_Aᵀ G_n Q_S)² to the accumulators.

    For a Dense layer the rotated gradient is rank one, ``u vᵀ`` with ``u = Q_Aᵀ a`` and
    ``v = Q_Sᵀ g``, so its square is ``u² (v²)ᵀ`` and no per-example gradient is formed.
    """
    captured = _capture_batch(model, key, x, y, m, layers, fisher)
    out = {}
    for layer in layers:
        a, g = captured[layer.name]
        qa, qs = rotations[layer.name]
        if a.shape[1] == 1:  # Dense: (u vᵀ)² = u² (v²)ᵀ, summed over the batch by one matrix product
            u, v = einsum("ni,ij->nj", a[:, 0], qa, dtype=dtype), einsum("no,op->np", g[:, 0], qs, dtype=dtype)
            update = einsum("ni,no->io", u**2, v**2, dtype=dtype)
        elif dtype is None:
            update = jnp.sum(rotated_gradients(a, g, qa, qs) ** 2, axis=0)
        else:  # the per-example gradient, then its rotation, each accumulated in float32
            rotated = einsum("ia,nio,ob->nab", qa, einsum("npi,npo->nio", a, g, dtype=dtype), qs, dtype=dtype)
            update = jnp.sum(rotated**2, axis=0)
        out[layer.name] = acc[layer.name] + update
    return out


def rotated_gradients(a: jax.Array, g: jax.Array, qa: jax.Array, qs: jax.Array) -> jax.Array:
    """Per-example gradients in the Kronecker eigenbasis, ``Q_Aᵀ (Σ_p a_p g_pᵀ) Q_S``: ``[N, in_dim, out]``.

    Two orders compute the same matrix: rotate the inputs and output gradients of every
    position first (``P·(in² + out² + in·out)`` per example), or form the per-example
    gradient first and rotate it (``P·in·out + in²·out + in·out²``). The cheaper is used:
    rotate-first for Dense layers (``P = 1``), usually gradient-first for convolutions.
    """
    p, i, o = a.shape[1], a.shape[2], g.shape[2]
    if p * (i * i + o * o + i * o) <= p * i * o + i * i * o + i * o * o:
        return per_example_layer_gradients(a @ qa, g @ qs)
    return jnp.swapaxes(qa, 0, 1) @ per_example_layer_gradients(a, g) @ qs


# What a mismatching fingerprint field means, for the note printed when partial sums are discarded.
_FINGERPRINT_WORDS = {
    "params_hash": "other parameters",
    "normalization": "another input normalisation",
    "data_hash": "other data",
    "config_hash": "another FactorConfig (fisher, batch size, seed, example cap or strategy)",
    "examples": "another number of examples",
    "dtype": "another dtype",
    "layers": "other layers",
    "rotations_sha256": "other covariance eigenbases",
    "stage": "another stage",
}


def _discard_stage(directory: Path, reason: str) -> None:
    warn_recovery(f"partial factor sums in {directory} {reason}: discarding them and starting over.")
    if is_writer():
        shutil.rmtree(directory)


def _stale_reason(directory: Path, fingerprint: dict, template: Any, total: int) -> tuple[str | None, int]:
    """Why the sums in ``directory`` must not be resumed (``None``: they may), and how many batches they hold."""
    from jaxpoison.training import checkpoint as ckpt

    try:
        record = json.loads((directory / "fingerprint.json").read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return "have no readable fingerprint (written by another fit or an older jaxpoison)", 0
    differ = [key for key in sorted(set(fingerprint) | set(record)) if record.get(key) != fingerprint.get(key)]
    if differ:
        return f"were fitted for {', '.join(_FINGERPRINT_WORDS.get(key, key) for key in differ)}", 0
    manager = ckpt.checkpoint_manager(directory, max_to_keep=1)
    try:
        found = ckpt.restore_latest(manager, template)
        done = 0 if found is None else found[2].get("next_batch")
        if not (is_integer(done) and 0 <= done <= total):
            raise ValueError(f"next_batch {done!r} is not in [0, {total}]")
    except Exception as e:  # whatever makes a cache unreadable, it is recomputed, never trusted
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"cannot be read back ({type(e).__name__}: {first})", 0
    finally:
        manager.close()
    return None, int(done)


def _resumable_stage(directory: Path, fingerprint: dict, template: Any, total: int) -> int:
    """Make ``directory`` safe to resume a pass from; return how many of its batches are already summed.

    The partial sums of a pass are only valid for the exact parameters, data, config and
    dtype that produced them, recorded as ``fingerprint.json`` beside the Orbax steps. Sums
    with another (or no) fingerprint, or that cannot be read back, are deleted with a
    warning and the pass starts from batch 0; they are never reused.
    """
    reason, done = "is new", 0
    if directory.is_dir() and any(directory.iterdir()):
        reason, done = _stale_reason(directory, fingerprint, template, total)
    barrier(f"partial sums checked: {directory.name}")  # every process decided before process 0 deletes
    if reason is None:
        return done
    if reason != "is new":
        _discard_stage(directory, reason)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "fingerprint.json", json.dumps(fingerprint, indent=2))
    barrier(f"partial sums reset: {directory.name}")
    return 0


def fit_factors(
    model: FunctionalModel,
    dataset: Dataset,
    config: FactorConfig = FactorConfig(),
    *,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> Factors:
    """Fit K-FAC or EK-FAC factors of ``model`` on ``dataset`` (normalised with its own constants).

    Args:
      model: the functional model (inference mode; BatchNorm uses running statistics).
      dataset: the training set.
      config: strategy, Fisher type, batch size, example cap, seed.
      mesh: data mesh for the streaming passes (default: all devices).
      checkpoint_dir: if given, each pass saves its partial sums every
        ``checkpoint_every`` batches; an interrupted fit resumes from them. Partial sums
        fitted for other parameters, data or config (or unreadable ones) are discarded
        with a warning and recomputed.
      progress: show progress bars.

    Returns:
      The fitted :class:`Factors`. ``meta["resumed_from"]`` maps each pass that resumed
      from partial sums in ``checkpoint_dir`` to the number of batches it reused (empty
      when nothing was reused).

    Raises:
      FactorError: NaN/Inf in the parameters or the fitted factors.
      InputError: non-floating parameters, an empty dataset.
      UntrackedParametersError: with ``on_untracked="error"`` and parameters no factor covers.

    References:
      James Martens and Roger Grosse. *Optimizing Neural Networks with Kronecker-factored
      Approximate Curvature.* ICML 2015, arXiv:1503.05671 (K-FAC).

      Roger Grosse and James Martens. *A Kronecker-factored Approximate Fisher Matrix for
      Convolution Layers.* ICML 2016, arXiv:1602.01368 (KFC, the convolution convention).

      Thomas George, César Laurent, Xavier Bouthillier, Nicolas Ballas and Pascal Vincent.
      *Fast Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis.*
      NeurIPS 2018, arXiv:1806.03884 (EK-FAC).

      Roger Grosse, Juhan Bae, Cem Anil, Nelson Elhage, et al. *Studying Large Language Model
      Generalization with Influence Functions.* arXiv:2308.03296, 2023 (EK-FAC for influence
      functions).
    """
    if not isinstance(config, FactorConfig):
        raise InputError(f"config must be a FactorConfig; got {type(config).__name__}.")
    if not (is_integer(checkpoint_every) and checkpoint_every >= 1):
        raise InputError(f"checkpoint_every must be an integer ≥ 1; got {checkpoint_every!r}.")
    if len(dataset) == 0:
        raise InputError("the training set is empty; factors need at least one example.")
    mesh = data_mesh() if mesh is None else mesh
    check_params(model.params)
    check_model(model, dataset.image_shape, dataset.images.dtype)
    layers, untracked = find_layers(model)
    if not layers:
        raise FactorError("the model has no nnx.Linear or nnx.Conv layer to fit factors for.")
    check_untracked(untracked, config.on_untracked)
    replicated = replicate(mesh, model)
    base_key = jax.random.key(config.seed)
    n = len(dataset) if config.max_examples is None else min(config.max_examples, len(dataset))
    total = -(-n // config.batch_size)
    dtype = jax.tree.leaves(model.params)[0].dtype
    model_hash = params_hash(model.params)
    # Everything the partial sums depend on; a checkpoint with another fingerprint is never resumed.
    fingerprint = {
        "params_hash": model_hash,
        "normalization": None if model.normalization is None else list(map(list, model.normalization)),
        "data_hash": dataset.content_hash,
        "config_hash": config.sums_hash(),
        "examples": n,
        "dtype": str(dtype),
        "layers": [layer.name for layer in layers],
    }
    resumed_from: dict[str, int] = {}

    def manager(stage, template, **extra):
        if checkpoint_dir is None:
            return None
        from jaxpoison.training import checkpoint as ckpt

        directory = Path(checkpoint_dir).absolute() / stage
        done = _resumable_stage(directory, {**fingerprint, "stage": stage, **extra}, template, total)
        if done:
            resumed_from[stage] = done
        return (ckpt.checkpoint_manager(directory, max_to_keep=1), checkpoint_every)

    static = {"layers": tuple(layers), "fisher": config.fisher, "dtype": config.dtype}

    # Stage 1: covariances. A averages inputs over examples and positions; S sums output
    # gradients over positions and averages over examples (KFC).
    init = {
        layer.name: {
            "a": jnp.zeros((layer.in_dim, layer.in_dim), dtype),
            "s": jnp.zeros((layer.out_features, layer.out_features), dtype),
        }
        for layer in layers
    }
    cov = reduce_dataset(
        lambda acc, b, x, y, m: _covariance_step(acc, replicated, jax.random.fold_in(base_key, b), x, y, m, **static),
        init, dataset, config.batch_size, mesh, desc="covariance", progress=progress, limit=n,
        checkpoint=manager("covariance", init),
    )  # fmt: skip
    cov = jax.tree.map(lambda c: np.asarray(c, np.float64) / n, to_host(cov))

    # Stage 2: eigendecompositions in float64 on the host.
    blocks: dict[str, dict[str, Any]] = {}
    for layer in layers:
        a_vals, a_vecs = _eigh(cov[layer.name]["a"])
        s_vals, s_vecs = _eigh(cov[layer.name]["s"])
        blocks[layer.name] = {
            "a_cov": cov[layer.name]["a"],
            "s_cov": cov[layer.name]["s"],
            "a_eigvecs": a_vecs,
            "s_eigvecs": s_vecs,
            "eigenvalues": np.outer(a_vals, s_vals),
        }

    # Stage 3 (EK-FAC): Lambda, the second moment of per-example gradients in the eigenbasis.
    if config.strategy == "ekfac":
        rotations = {name: (jnp.asarray(b["a_eigvecs"], dtype), jnp.asarray(b["s_eigvecs"], dtype))
                     for name, b in blocks.items()}  # fmt: skip
        # Lambda's partial sums are only valid in the eigenbases they were rotated into.
        rotation_hash = hashlib.sha256("".join(array_sha256(q) for name in sorted(rotations)
                                               for q in rotations[name]).encode()).hexdigest()[:16]  # fmt: skip
        rotations = replicate(mesh, rotations)

        init = {layer.name: jnp.zeros((layer.in_dim, layer.out_features), dtype) for layer in layers}
        lam = reduce_dataset(
            lambda acc, b, x, y, m: _lambda_step(
                acc, replicated, rotations, jax.random.fold_in(base_key, 10**9 + b), x, y, m, **static
            ),
            init, dataset, config.batch_size, mesh, desc="lambda", progress=progress, limit=n,
            checkpoint=manager("lambda", init, rotations_sha256=rotation_hash),
        )  # fmt: skip
        for name, value in to_host(lam).items():
            blocks[name]["eigenvalues"] = np.asarray(value, np.float64) / n

    blocks = {name: {k: jnp.asarray(v, dtype) for k, v in b.items()} for name, b in blocks.items()}
    check_finite(blocks, "the fitted factors")
    meta = {
        "strategy": config.strategy,
        "fisher": config.fisher,
        "examples": n,
        "seed": int(config.seed),
        "compute_dtype": config.dtype or str(dtype),
        "params_hash": model_hash,
        "normalization": None if model.normalization is None else list(map(list, model.normalization)),
        "data_hash": dataset.content_hash,
        "layers": [layer.name for layer in layers],
        "untracked": untracked,
        "resumed_from": resumed_from,
    }
    return Factors(tuple(layers), blocks, meta)


def layer_damping(eigenvalues: jax.Array, damping: float | None) -> jax.Array:
    """The damping λ of one layer: a constant, or ``0.1 × mean(eigenvalues)`` when ``None``."""
    check_damping(damping)
    if damping is None:
        return 0.1 * jnp.mean(eigenvalues)
    return jnp.asarray(damping, eigenvalues.dtype)


def precondition(factors: Factors, grads: dict[str, jax.Array], damping: float | None) -> dict[str, jax.Array]:
    """Multiply layer gradients ``{name: [..., in_dim, out]}`` by the damped inverse curvature."""
    out = {}
    for layer in factors.layers:
        block = factors.blocks[layer.name]
        qa, qs, lam = block["a_eigvecs"], block["s_eigvecs"], block["eigenvalues"]
        rotated = jnp.swapaxes(qa, 0, 1) @ grads[layer.name] @ qs
        denominator = lam + layer_damping(lam, damping)
        rotated = rotated / denominator.reshape((1,) * (rotated.ndim - lam.ndim) + lam.shape)  # leading query axes
        out[layer.name] = qa @ rotated @ jnp.swapaxes(qs, 0, 1)
    return out


def dense_block(factors: Factors, name: str) -> jax.Array:
    """The layer's approximate curvature block as a dense ``[in·out, in·out]`` matrix (tests, tiny layers).

    Index order is that of a row-major flattened ``[in_dim, out]`` gradient.
    """
    block = factors.blocks[name]
    basis = jnp.kron(block["a_eigvecs"], block["s_eigvecs"])
    return basis @ jnp.diag(block["eigenvalues"].reshape(-1)) @ basis.T


# --------------------------------------------------------------------------- persistence


def _block_hashes(blocks: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {name: {key: array_sha256(value) for key, value in block.items()} for name, block in blocks.items()}


def save_factors(directory: str | os.PathLike, factors: Factors) -> None:
    """Write factors with Orbax (arrays) plus ``factors.json`` (metadata and a SHA-256 per array).

    ``factors.json`` is removed first and written last, atomically, so a save that dies
    half-way leaves no factors that look valid.
    """
    from jaxpoison.training.checkpoint import save_tree

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if is_writer():
        (directory / "factors.json").unlink(missing_ok=True)
    blocks = jax.device_get(factors.blocks)
    save_tree(directory / "blocks", blocks)
    record = {"format": FACTORS_FORMAT, "meta": factors.meta, "sha256": _block_hashes(blocks)}
    atomic_write_text(directory / "factors.json", json.dumps(record, indent=2))


def _read_record(directory: Path) -> dict:
    """The parsed ``factors.json`` of ``directory``, or :class:`FactorArtifactError` saying what is wrong."""
    path = directory / "factors.json"
    if not path.is_file():
        raise FactorArtifactError(f"no factors in {directory} (factors.json missing); fit them with fit_factors first.")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FactorArtifactError(
            f"{path} is not valid JSON ({e}); the save was interrupted or the file is damaged. "
            f"Delete {directory} and fit the factors again."
        ) from e
    if not isinstance(record, dict) or record.get("format") != FACTORS_FORMAT:
        raise FactorArtifactError(
            f"{path} is not a factors.json of format {FACTORS_FORMAT} (older versions recorded no content hashes, so "
            f"their arrays cannot be verified). Delete {directory} and fit the factors again."
        )
    meta, hashes = record.get("meta"), record.get("sha256")
    if not (isinstance(meta, dict) and isinstance(meta.get("layers"), list) and "params_hash" in meta
            and isinstance(hashes, dict)):  # fmt: skip
        raise FactorArtifactError(f"{path} lacks its meta/sha256 records; delete {directory} and refit the factors.")
    return record


def load_factors(directory: str | os.PathLike, model: FunctionalModel) -> Factors:
    """Read factors saved by :func:`save_factors` for ``model``, verifying every array's SHA-256.

    Raises:
      FactorArtifactError: the files are missing, damaged or unreadable, the arrays are not
        the ones ``factors.json`` records (e.g. ``blocks/`` of another fit), or they were
        fitted on other parameters or name other layers than the model has.
    """
    from jaxpoison.training.checkpoint import CheckpointError, load_tree

    directory = Path(directory).absolute()
    record = _read_record(directory)
    meta = record["meta"]
    layers, _ = find_layers(model)
    if [layer.name for layer in layers] != meta["layers"]:
        raise FactorArtifactError(f"the factors in {directory} were fitted for other layers: {meta['layers'][:5]}…")
    if meta["params_hash"] != params_hash(model.params):
        raise FactorArtifactError(
            f"the factors in {directory} were fitted for other parameters (hash {meta['params_hash']}, "
            f"model {params_hash(model.params)}); refit them for this model."
        )
    try:
        blocks = load_tree(directory / "blocks", what="factor arrays")
    except CheckpointError as e:
        raise FactorArtifactError(f"{e} Delete {directory} and fit the factors again.") from e
    blocks = {name: {k: np.asarray(v) for k, v in b.items()} for name, b in blocks.items()}
    found = _block_hashes(blocks)
    if found != record["sha256"]:
        names = sorted({f"{n}/{k}" for n in set(found) | set(record["sha256"])
                        for k in set(found.get(n, {})) | set(record["sha256"].get(n, {}))
                        if found.get(n, {}).get(k) != record["sha256"].get(n, {}).get(k)})  # fmt: skip
        raise FactorArtifactError(
            f"the factor arrays in {directory / 'blocks'} are not the ones its factors.json records (content hash "
            f"differs for {', '.join(names[:5])}): they come from another fit or are damaged. Delete {directory} "
            "and fit the factors again."
        )
    blocks = {name: {k: jnp.asarray(v) for k, v in b.items()} for name, b in blocks.items()}
    return Factors(tuple(layers), blocks, meta)
