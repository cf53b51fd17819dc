"""Shared by the adapter tests: tiny data, and the check that a model's twin in another framework scores alike.

A "twin" is jaxpoison's NNX CNN rebuilt in another framework (Linen, Equinox) holding the very
same weights. In float64 the twin must give the same EK-FAC factors (up to eigenvector signs),
pairwise influence scores and Δ-Influence flags.
"""

from __future__ import annotations

import numpy as np

from jaxpoison.data import Dataset, Provenance
from jaxpoison.detection import DeltaConfig, delta_influence
from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
from jaxpoison.models import FunctionalModel

SHAPE, CLASSES = (8, 8, 1), 4
MEAN, STD = [0.5], [0.3]  # tiny_data's normalisation constants


def tiny_data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.random((n, *SHAPE), dtype=np.float32), rng.integers(0, CLASSES, n).astype(np.int32),
                   tuple(map(str, range(CLASSES))), np.full(1, 0.5, np.float32), np.full(1, 0.3, np.float32),
                   Provenance("synthetic", "tiny", "train"))  # fmt: skip


def assert_twin_scores_alike(reference: FunctionalModel, twin: FunctionalModel) -> None:
    """Factors, pairwise scores and Δ-Influence flags of ``twin`` equal ``reference``'s (float64, 1e-8)."""
    models = {"reference": reference, "twin": twin}
    data, queries = tiny_data(24, 0), tiny_data(3, 7)
    config = FactorConfig(strategy="ekfac", fisher="empirical", batch_size=8)
    factors = {name: fit_factors(m, data, config, progress=False) for name, m in models.items()}
    # Layer names coincide (both use the NNX attribute names); factors are in the [in_dim, out] convention.
    for name, block in factors["reference"].blocks.items():
        for key, value in block.items():  # absolute values: eigenvector signs are arbitrary
            got = np.abs(factors["twin"].blocks[name][key])
            np.testing.assert_allclose(got, np.abs(value), rtol=1e-8, atol=1e-12, err_msg=f"{name}.{key}")
    score = ScoreConfig(damping=0.01, batch_size=8)
    scores = {name: pairwise_scores(m, data, queries.images, queries.labels, factors[name], score,
                                    progress=False).values for name, m in models.items()}  # fmt: skip
    np.testing.assert_allclose(scores["twin"], scores["reference"], rtol=1e-8, atol=1e-12)

    point = queries.images[0]
    target = int(np.argmax(reference(point[None])))
    delta = DeltaConfig(n_b=6, n_tol=1, seed=0)
    flags = {name: delta_influence(m, data, point, target, factors[name], delta, score, progress=False).flagged
             for name, m in models.items()}  # fmt: skip
    np.testing.assert_array_equal(flags["twin"], flags["reference"])


def assert_ekfac_eigenvalues_equal_dense(factors, grads) -> None:
    """EK-FAC's eigenvalues equal ``E[(Q_A ⊗ Q_S)ᵀ vec G_n]²`` of the per-example gradients ``grads``
    (a parameter pytree with a leading example axis), layer by layer, in float64."""
    import jax.numpy as jnp

    from jaxpoison.influence.capture import layer_gradient

    for layer in factors.layers:
        block = factors.blocks[layer.name]
        basis = jnp.kron(block["a_eigvecs"], block["s_eigvecs"])
        g = layer_gradient(grads, layer)
        g = g.reshape(g.shape[0], -1)
        want = jnp.mean((g @ basis) ** 2, axis=0)
        np.testing.assert_allclose(block["eigenvalues"].reshape(-1), want, rtol=1e-8, atol=1e-14, err_msg=layer.name)


def nnx_reference() -> tuple[FunctionalModel, dict]:
    """jaxpoison's NNX CNN (width 2, hidden 6) in float64, normalising with :data:`MEAN`/:data:`STD` (the
    constants of :func:`tiny_data`), and its weights as a plain dict to copy into a twin.

    Call it under ``jax.enable_x64(True)``.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxpoison.models import create_model, to_functional

    model = to_functional(create_model("cnn", SHAPE, CLASSES, width=2, hidden=6), MEAN, STD)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.params)
    return model.replace(params=params), nnx.to_pure_dict(params)
