"""LiSSA's two damping parametrisations, its diagnostics, and IFS's two curvatures, all
against exact float64 references (dense solves, the reference recursion written out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxpoison.data import Dataset, Provenance, normalize
from jaxpoison.influence import LissaConfig, cross_entropy, lissa
from jaxpoison.models import create_model, to_functional
from jaxpoison.selection import lissa_inverse_hvp


def quadratic(seed: int = 0, dim: int = 5):
    """A fixed SPD matrix ``A`` (eigenvalues in [0.5, 3]) whose product ignores the minibatch, and a vector."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = q @ np.diag(np.linspace(0.5, 3.0, dim)) @ q.T
    return a, rng.normal(size=dim)


def reference_recursion(a, v, damp, scale, steps):
    """The common public LiSSA recursion, h ← v + (1 − damp)·h − A·h/scale from h = v, every iterate."""
    h, iterates = v.copy(), []
    for _ in range(steps):
        h = v + (1.0 - damp) * h - a @ h / scale
        iterates.append(h)
    return iterates


def test_per_step_form_converges_to_the_references_effective_damping():
    with jax.enable_x64(True):
        a, v = quadratic()
        config = LissaConfig(damping=0.02, scale=4.0, depth=3000, batch_size=1, damping_form="per_step", loop="scan")
        assert config.effective_damping == pytest.approx(0.08)
        est, info = lissa(lambda u, idx: jnp.asarray(a) @ u, jnp.asarray(v), 10, config, jax.random.key(0))
        want = np.linalg.solve(a + 0.02 * 4.0 * np.eye(5), v)
        np.testing.assert_allclose(np.asarray(est), want, rtol=1e-10)
        assert bool(info.finite) and float(info.iterate_change) < 1e-10
        # It is not the Hessian-units solve with the same number: the effective λ is damping·scale.
        wrong = np.linalg.solve(a + 0.02 * np.eye(5), v)
        assert np.linalg.norm(np.asarray(est) - wrong) > 0.01 * np.linalg.norm(wrong)


def test_per_step_form_is_the_reference_recursion_step_by_step():
    with jax.enable_x64(True):
        a, v = quadratic(seed=1)
        damp, scale, steps = 0.01, 25.0, 7
        config = LissaConfig(damping=damp, scale=scale, depth=steps, batch_size=1, damping_form="per_step")
        est, info = lissa(lambda u, idx: jnp.asarray(a) @ u, jnp.asarray(v), 10, config, jax.random.key(0))
        iterates = reference_recursion(a, v, damp, scale, steps)
        # The reference returns h itself; jaxpoison returns h / scale (one global factor).
        np.testing.assert_allclose(np.asarray(est) * scale, iterates[-1], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(info.norms[0]), [np.linalg.norm(h) / scale for h in iterates],
                                   rtol=1e-12)  # fmt: skip


def test_hessian_units_form_stays_the_default_and_solves_with_damping_itself():
    with jax.enable_x64(True):
        assert LissaConfig().damping_form == "hessian"
        a, v = quadratic(seed=2)
        config = LissaConfig(damping=0.3, scale=4.0, depth=2000, batch_size=1, loop="scan")
        assert config.effective_damping == 0.3
        est, _ = lissa(lambda u, idx: jnp.asarray(a) @ u, jnp.asarray(v), 10, config, jax.random.key(0))
        np.testing.assert_allclose(np.asarray(est), np.linalg.solve(a + 0.3 * np.eye(5), v), rtol=1e-10)


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_iterate_change_is_the_relative_change_of_the_vector_over_the_last_tenth(loop):
    with jax.enable_x64(True):
        a, v = quadratic(seed=3)
        config = LissaConfig(damping=0.005, scale=10.0, depth=40, batch_size=1, damping_form="per_step", loop=loop)
        _, info = lissa(lambda u, idx: jnp.asarray(a) @ u, jnp.asarray(v), 10, config, jax.random.key(0))
        iterates = reference_recursion(a, v, 0.005, 10.0, 40)
        last, earlier = iterates[-1], iterates[-1 - 4]  # the last tenth of 40 steps is 4 steps
        want = np.linalg.norm(last - earlier) / np.linalg.norm(last)
        assert want > 1e-3  # far from settled after 40 steps: the check has something to see
        np.testing.assert_allclose(float(info.iterate_change), want, rtol=1e-10)


def test_relative_residual_is_exact_on_a_quadratic():
    from jaxpoison.influence.solvers import relative_residual

    with jax.enable_x64(True):
        a, v = quadratic(seed=4)
        product = lambda u, idx: jnp.asarray(a) @ u
        idx = jnp.zeros((3, 2), jnp.int32)
        exact = np.linalg.solve(a + 0.2 * np.eye(5), v)
        assert float(relative_residual(product, jnp.asarray(exact), jnp.asarray(v), 0.2, idx)) < 1e-12
        assert float(relative_residual(product, jnp.zeros(5), jnp.asarray(v), 0.2, idx)) == pytest.approx(1.0)
        want = np.linalg.norm((a + 0.2 * np.eye(5)) @ v - v) / np.linalg.norm(v)
        got = float(relative_residual(product, jnp.asarray(v), jnp.asarray(v), 0.2, idx))
        assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"damping_form": "nimarb"}, "damping_form"), ({"damping_form": "per_step", "damping": 1.0}, r"\[0, 1\)")],
)
def test_lissa_config_refuses_an_unknown_form_or_a_per_step_damping_of_one_or_more(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LissaConfig(**kwargs)


# --------------------------------------------------------------------------- IFS's curvature options


def tiny_problem():
    rng = np.random.default_rng(0)
    shape, classes = (3, 3, 1), 3
    train = Dataset(images=rng.random((24, *shape), dtype=np.float32), labels=rng.integers(0, classes, 24),
                    class_names=("a", "b", "c"), mean=np.full(1, 0.5, np.float32), std=np.full(1, 0.25, np.float32),
                    provenance=Provenance("synthetic", "tiny", "train"))  # fmt: skip
    model = to_functional(create_model("mlp", shape, classes, seed=1, hidden=(4,)), train.mean, train.std)
    model = model.replace(params=jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), model.params))
    return train, model


def dense_curvatures(model, train):
    """The mean-CE Hessian by ``jax.hessian`` and the Gauss-Newton matrix ``Jᵀ (diag p − p pᵀ) J / n``."""
    flat, unflatten = ravel_pytree(model.params)
    x = normalize(jnp.asarray(train.images), train.mean, train.std)
    y = jnp.asarray(train.labels)

    def logits(w):
        return model.structure.apply(unflatten(w), model.state, x)  # the raw network, on normalised images

    hessian = jax.hessian(lambda w: cross_entropy(logits(w), y).mean())(flat)
    jac = jax.jacfwd(logits)(flat)  # [n, C, D]
    p = jax.nn.softmax(logits(flat))
    h_out = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)  # [n, C, C]
    gauss_newton = jnp.einsum("ncd,nce,nef->df", jac, h_out, jac) / x.shape[0]
    return flat, unflatten, hessian, gauss_newton


@pytest.mark.parametrize("form", ["hessian", "per_step"])
@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_ifs_curvature_options_match_dense_solves(curvature, form):
    from jaxpoison.selection.ifs import lissa_residual

    with jax.enable_x64(True):
        train, model = tiny_problem()
        flat, unflatten, hessian, gauss_newton = dense_curvatures(model, train)
        matrix = hessian if curvature == "hessian" else gauss_newton
        eig = np.linalg.eigvalsh(np.asarray(matrix))
        if curvature == "hessian":
            assert eig[0] < -1e-6  # a real Hessian with negative curvature, not the Gauss-Newton matrix
        lam = max(0.0, -eig[0]) + 0.05
        scale = 1.2 * (eig[-1] + lam)
        damping = lam if form == "hessian" else lam / scale
        v = jnp.asarray(np.random.default_rng(1).normal(size=flat.size))
        form_kwargs = {} if form == "hessian" else {"damping_form": form}
        config = LissaConfig(damping=damping, scale=scale, depth=6000, batch_size=len(train), loop="scan",
                             **form_kwargs)  # fmt: skip
        assert form == "hessian" or config.effective_damping == pytest.approx(lam, rel=1e-12)
        s, info = lissa_inverse_hvp(model, train, unflatten(v), config, jax.random.key(0), curvature)
        want = np.linalg.solve(np.asarray(matrix) + lam * np.eye(flat.size), np.asarray(v))
        assert bool(info.finite)
        np.testing.assert_allclose(np.asarray(ravel_pytree(s)[0]), want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
        # The residual IFS reports: 0 at the dense solve (3 batches of 8 cover all 24 examples); exact at v.
        kwargs = {"batch_size": 8, "curvature": curvature}
        res, examples = lissa_residual(model, train, unflatten(jnp.asarray(want)), unflatten(v), lam,
                                       jax.random.key(1), **kwargs)  # fmt: skip
        assert examples == 24 and res < 1e-9
        res, _ = lissa_residual(model, train, unflatten(v), unflatten(v), lam, jax.random.key(1), **kwargs)
        m = np.asarray(matrix) + (lam - 1.0) * np.eye(flat.size)
        assert res == pytest.approx(np.linalg.norm(m @ np.asarray(v)) / np.linalg.norm(np.asarray(v)), rel=1e-9)
