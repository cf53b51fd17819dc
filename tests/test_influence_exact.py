"""The influence engine against exact float64 references on tiny models.

Every approximation is compared with a dense construction: the Hessian from
``jax.hessian``, inverse products from ``jnp.linalg.solve``, Fisher blocks and
EK-FAC eigenvalues from per-example gradients computed by ``vmap(grad)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import spearmanr

from jaxpoison.data import Dataset, Provenance, load_dataset, normalize
from jaxpoison.influence import (
    FactorConfig,
    LissaConfig,
    ScoreConfig,
    batch_loss,
    conjugate_gradient,
    cross_entropy,
    dense_block,
    dense_gauss_newton,
    dense_hessian,
    exact_ihvp,
    find_layers,
    fit_factors,
    flatten,
    gnvp,
    hvp,
    layer_gradient,
    lissa,
    margin_measurement,
    pairwise_scores,
    per_example_grads,
    precondition,
    query_gradients,
    self_scores,
    solve_dense,
)
from jaxpoison.influence.capture import Layer, capture, conv_patches, per_example_layer_gradients
from jaxpoison.models import create_model, to_functional
from tests.twins import assert_ekfac_eigenvalues_equal_dense


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def f64_model(name, shape, classes, seed=0, **kw):
    """A float64 model normalising with tiny_data's constants, as the library sees it."""
    model = to_functional(create_model(name, shape, classes, seed=seed, **kw), [0.5] * shape[-1], [0.3] * shape[-1])
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    return model.replace(params=cast(model.params), state=cast(model.state))


def network(model):
    """``f(params, x)`` of the raw network on *normalised* x: the dense references below normalise by hand."""
    return lambda params, x: model.structure.apply(params, model.state, x)


def tiny_data(n=12, shape=(8, 8, 1), classes=4, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        images=rng.random((n, *shape), dtype=np.float32),
        labels=rng.integers(0, classes, n).astype(np.int32),
        class_names=tuple(map(str, range(classes))),
        mean=np.full(shape[-1], 0.5, np.float32),
        std=np.full(shape[-1], 0.3, np.float32),
        provenance=Provenance("synthetic", "tiny", "train"),
    )


def random_like(tree, seed=1):
    flat, unflatten = flatten(tree)
    return unflatten(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


# --------------------------------------------------------------------------- curvature products


def test_hvp_matches_dense_hessian():
    model = f64_model("mlp", (2, 2, 1), 3, hidden=(5,))
    x = jax.random.normal(jax.random.key(0), (7, 2, 2, 1), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1, 2, 0])
    f = batch_loss(model.bind(), cross_entropy, "mean")
    v = random_like(model.params)
    got, _ = flatten(hvp(f, model.params, v, x, y))
    want = dense_hessian(f, model.params, x, y) @ flatten(v)[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gnvp_matches_dense_gauss_newton():
    model = f64_model("mlp", (2, 2, 1), 3, hidden=(4,))
    x = jax.random.normal(jax.random.key(2), (5, 2, 2, 1), jnp.float64)
    y = jnp.array([0, 1, 2, 2, 1])
    loss_of_outputs = lambda z, y: jnp.sum(jax.vmap(cross_entropy)(z, y))
    v = random_like(model.params)
    got, _ = flatten(gnvp(model.bind(), loss_of_outputs, model.params, v, x, y))
    want = dense_gauss_newton(model.bind(), loss_of_outputs, model.params, x, y) @ flatten(v)[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _convex_problem():
    model = f64_model("logreg", (2, 2, 1), 3)
    x = jax.random.normal(jax.random.key(3), (20, 2, 2, 1), jnp.float64)
    y = jax.random.randint(jax.random.key(4), (20,), 0, 3)
    f = batch_loss(model.bind(), cross_entropy, "mean")
    return model, x, y, f


def test_cg_and_lissa_converge_to_dense_solve():
    model, x, y, f = _convex_problem()
    damping = 0.05
    v = random_like(model.params, seed=5)
    want = flatten(solve_dense(dense_hessian(f, model.params, x, y), v, damping))[0]

    cg_x, info = conjugate_gradient(lambda u: hvp(f, model.params, u, x, y), v, damping=damping, tol=1e-12)
    assert bool(info.converged)
    np.testing.assert_allclose(flatten(cg_x)[0], want, rtol=1e-8)

    # Full-batch LiSSA is deterministic: it must reach the solve to high precision.
    batch_hvp = lambda u, idx: hvp(f, model.params, u, x[idx], y[idx])
    config = LissaConfig(damping=damping, scale=5.0, depth=3000, batch_size=x.shape[0])
    est, info = jax.jit(lambda v, k: lissa(batch_hvp, v, x.shape[0], config, k))(v, jax.random.key(0))
    assert bool(info.finite) and float(info.relative_change) < 1e-8
    np.testing.assert_allclose(flatten(est)[0], want, rtol=1e-7)

    # Minibatch LiSSA with repeats is a noisy estimate of the same vector.
    config = LissaConfig(damping=damping, scale=5.0, depth=2000, repeats=4, batch_size=10)
    est, _ = lissa(batch_hvp, v, x.shape[0], config, jax.random.key(1))
    cosine = jnp.dot(flatten(est)[0], want) / (jnp.linalg.norm(flatten(est)[0]) * jnp.linalg.norm(want))
    assert float(cosine) > 0.95


def test_lissa_divergence_is_visible():
    model, x, y, f = _convex_problem()
    v = random_like(model.params)
    config = LissaConfig(damping=0.0, scale=0.01, depth=200, batch_size=20)  # scale far below λ_max
    _, info = lissa(lambda u, idx: hvp(f, model.params, u, x[idx], y[idx]), v, 20, config, jax.random.key(0))
    assert not bool(info.finite) or float(info.norms[0, -1]) > 1e6 * float(info.norms[0, 0])


def test_exact_ihvp_inverts_the_hessian():
    model, x, y, f = _convex_problem()
    v = random_like(model.params)
    inv_v = exact_ihvp(f, model.params, v, x, y, damping=0.1)
    back = jax.tree.map(lambda a, b: a + 0.1 * b, hvp(f, model.params, inv_v, x, y), inv_v)
    np.testing.assert_allclose(flatten(back)[0], flatten(v)[0], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- layer capture


def _naive_patches(x, kernel, strides, padding, dilation):
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, hp, wp, c = xp.shape
    out_h = (hp - (kh - 1) * dh - 1) // sh + 1
    out_w = (wp - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((n, out_h * out_w, kh * kw * c))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * sh : i * sh + (kh - 1) * dh + 1 : dh, j * sw : j * sw + (kw - 1) * dw + 1 : dw, :]
            out[:, i * out_w + j] = patch.reshape(n, -1)  # (kh, kw, c) order, like an HWIO kernel
    return out


@pytest.mark.parametrize(
    "kernel,strides,padding,dilation",
    [((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)), ((3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2)),
     ((1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1))],
)  # fmt: skip
def test_conv_patches_match_naive_loop(kernel, strides, padding, dilation):
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 3))
    layer = Layer("c", ("c",), "conv", (*kernel, 3, 4), False, (kernel, strides, padding, 1, dilation))
    want = _naive_patches(x, kernel, strides, padding, dilation)
    np.testing.assert_allclose(conv_patches(jnp.asarray(x), layer), want)


@pytest.mark.parametrize("name,shape,kw", [("cnn", (8, 8, 1), {}), ("resnet18", (8, 8, 3), {"width": 4})])
def test_captured_per_example_gradients_equal_vmap_grad(name, shape, kw):
    model = f64_model(name, shape, 5, **kw)
    layers, untracked = find_layers(model)
    assert len(layers) == (4 if name == "cnn" else 21)
    assert (not untracked) if name == "cnn" else all(".bn" in u or "_bn" in u or "shortcut.1" in u for u in untracked)
    x = jax.random.normal(jax.random.key(0), (3, *shape), jnp.float64)
    y = jnp.array([0, 3, 4])
    _, captured = capture(model, layers, x, y, cross_entropy)
    reference = per_example_grads(network(model), cross_entropy, model.params, model.normalize(x), y)
    for layer in layers:
        got = per_example_layer_gradients(*captured[layer.name])
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)


# --------------------------------------------------------------------------- K-FAC / EK-FAC


def _layer_grads(model, data, layer, labels=None):
    x = normalize(jnp.asarray(data.images), data.mean, data.std)
    y = jnp.asarray(data.labels if labels is None else labels)
    return layer_gradient(per_example_grads(network(model), cross_entropy, model.params, x, y), layer)


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
def test_kfac_and_ekfac_equal_the_exact_fisher_block_for_one_dense_example(strategy):
    model = f64_model("logreg", (3, 3, 1), 4)
    data = tiny_data(n=1, shape=(3, 3, 1), classes=4)
    config = FactorConfig(strategy=strategy, fisher="empirical", batch_size=1)
    factors = fit_factors(model, data, config, progress=False)
    (layer,) = factors.layers
    g = _layer_grads(model, data, layer)[0].reshape(-1)
    np.testing.assert_allclose(dense_block(factors, layer.name), jnp.outer(g, g), atol=1e-12)


def test_ekfac_eigenvalues_and_preconditioning_match_dense_construction():
    model = f64_model("cnn", (8, 8, 1), 4, width=2, hidden=6)
    data = tiny_data(n=10)
    config = FactorConfig(strategy="ekfac", fisher="empirical", batch_size=4)  # 3 batches, last one padded
    factors = fit_factors(model, data, config, progress=False)
    for layer in factors.layers:
        block = factors.blocks[layer.name]
        basis = jnp.kron(block["a_eigvecs"], block["s_eigvecs"])
        np.testing.assert_allclose(basis.T @ basis, jnp.eye(basis.shape[0]), atol=1e-10)
        grads = _layer_grads(model, data, layer).reshape(len(data), -1)
        lam = jnp.mean((grads @ basis) ** 2, axis=0)
        np.testing.assert_allclose(block["eigenvalues"].reshape(-1), lam, rtol=1e-8, atol=1e-14, err_msg=layer.name)
        v = jax.random.normal(jax.random.key(0), (2, layer.in_dim, layer.out_features), jnp.float64)
        grads = {other.name: jnp.zeros((2, other.in_dim, other.out_features)) for other in factors.layers}
        got = precondition(factors, {**grads, layer.name: v}, damping=0.3)[layer.name]
        want = basis @ ((basis.T @ v.reshape(2, -1).T) / (lam + 0.3)[:, None])
        np.testing.assert_allclose(got.reshape(2, -1), want.T, rtol=1e-8, atol=1e-12)


def test_kfac_covariances_are_the_input_and_gradient_second_moments():
    model = f64_model("mlp", (4, 4, 1), 3, hidden=(5,))
    data = tiny_data(n=9, shape=(4, 4, 1), classes=3)
    factors = fit_factors(model, data, FactorConfig(strategy="kfac", fisher="empirical", batch_size=4), progress=False)
    head = next(layer for layer in factors.layers if layer.name == "head")
    x = normalize(jnp.asarray(data.images), data.mean, data.std)
    a = jnp.concatenate([model.structure.features(model.params, model.state, x), jnp.ones((len(data), 1))], axis=1)
    np.testing.assert_allclose(factors.blocks[head.name]["a_cov"], a.T @ a / len(data), rtol=1e-10)
    logits = network(model)(model.params, x)
    g = jax.nn.softmax(logits) - jax.nn.one_hot(data.labels, 3)  # d CE / d logits
    np.testing.assert_allclose(factors.blocks[head.name]["s_cov"], g.T @ g / len(data), rtol=1e-10, atol=1e-14)


def test_true_fisher_is_seeded_and_differs_from_empirical():
    model = f64_model("logreg", (2, 2, 1), 3)
    data = tiny_data(n=16, shape=(2, 2, 1), classes=3)
    fit = lambda **kw: fit_factors(model, data, FactorConfig(strategy="kfac", batch_size=8, **kw), progress=False)
    a, b, c = fit(fisher="true", seed=1), fit(fisher="true", seed=1), fit(fisher="empirical")
    name = a.layers[0].name
    np.testing.assert_array_equal(a.blocks[name]["s_cov"], b.blocks[name]["s_cov"])
    assert not np.allclose(a.blocks[name]["s_cov"], c.blocks[name]["s_cov"])


# --------------------------------------------------------------------------- scores


@pytest.fixture(scope="module")
def scored_setup():
    with jax.enable_x64(True):
        model = f64_model("cnn", (8, 8, 1), 4, width=2, hidden=6)
        data = tiny_data(n=10)
        queries = tiny_data(n=5, seed=7)
        factors = fit_factors(model, data, FactorConfig(strategy="ekfac", fisher="empirical", batch_size=4),
                              progress=False)  # fmt: skip
    return model, data, queries, factors


@pytest.mark.parametrize("use_factors", [True, False])
def test_pairwise_scores_equal_the_dense_formula(scored_setup, use_factors):
    model, data, queries, factors = scored_setup
    factors = factors if use_factors else None
    config = ScoreConfig(measurement="margin", damping=0.01, batch_size=4)
    scores = pairwise_scores(model, data, queries.images, queries.labels, factors, config, progress=False).values
    xq = normalize(jnp.asarray(queries.images), queries.mean, queries.std)
    from jaxpoison.influence import margin_measurement

    q_grads = per_example_grads(network(model), margin_measurement, model.params, xq, jnp.asarray(queries.labels))
    want = 0.0
    for layer in model_layers(model):
        gq = layer_gradient(q_grads, layer).reshape(len(queries), -1)
        gn = _layer_grads(model, data, layer).reshape(len(data), -1)
        if factors is not None:
            block = factors.blocks[layer.name]
            basis = jnp.kron(block["a_eigvecs"], block["s_eigvecs"])
            gq = ((gq @ basis) / (block["eigenvalues"].reshape(1, -1) + 0.01)) @ basis.T
        want = want + gq @ gn.T
    np.testing.assert_allclose(scores, want, rtol=1e-8, atol=1e-10)


def model_layers(model):
    return find_layers(model)[0]


def test_one_pass_multi_query_equals_query_by_query(scored_setup):
    model, data, queries, factors = scored_setup
    config = ScoreConfig(damping=1e-3, batch_size=4)
    together = pairwise_scores(model, data, queries.images, queries.labels, factors, config, progress=False).values
    for q in range(len(queries)):
        alone = pairwise_scores(model, data, queries.images[q : q + 1], queries.labels[q : q + 1], factors, config,
                                progress=False).values  # fmt: skip
        np.testing.assert_allclose(together[q : q + 1], alone, rtol=1e-10, atol=1e-12)


def test_self_scores_are_the_pairwise_diagonal(scored_setup):
    model, data, _, factors = scored_setup
    config = ScoreConfig(measurement="cross_entropy", damping=1e-3, batch_size=4)
    pair = pairwise_scores(model, data, data.images, data.labels, factors, config, progress=False).values
    for f in (factors, None):
        pair = pairwise_scores(model, data, data.images, data.labels, f, config, progress=False).values
        own = self_scores(model, data, f, config, progress=False).values
        np.testing.assert_allclose(own, np.diag(pair), rtol=1e-9)
        assert np.all(own > 0)


def test_scoring_does_not_recompile(scored_setup):
    from jaxpoison.influence import scores as scores_module

    model, data, queries, factors = scored_setup
    config = ScoreConfig(damping=1e-3, batch_size=4)
    pairwise_scores(model, data, queries.images, queries.labels, factors, config, progress=False)
    sizes = scores_module._pairwise_batch._cache_size(), scores_module._query_gradients._cache_size()
    pairwise_scores(model, data, queries.images[::-1], queries.labels[::-1], factors, config, progress=False)
    assert (scores_module._pairwise_batch._cache_size(), scores_module._query_gradients._cache_size()) == sizes


# --------------------------------------------------------------------------- leave-one-out


def test_influence_ranks_agree_with_leave_one_out_retraining():
    # L2-regularised multinomial logistic regression, trained to optimality by Newton's method.
    rng = np.random.default_rng(0)
    n, d, classes, l2 = 40, 3, 3, 0.05
    w_true = rng.normal(size=(d, classes)) * 2
    x = rng.normal(size=(n, d))
    y = np.array([rng.choice(classes, p=np.exp(r) / np.exp(r).sum()) for r in x @ w_true])
    x_test, y_test = rng.normal(size=(1, d)), np.array([1])
    apply = lambda params, x: x @ params["w"] + params["b"][None]
    init = {"w": jnp.zeros((d, classes)), "b": jnp.zeros(classes)}

    def objective(params, x, y):
        return batch_loss(apply, cross_entropy, "mean")(params, x, y) + 0.5 * l2 * sum(
            jnp.sum(p**2) for p in jax.tree.leaves(params)
        )

    @jax.jit
    def newton_step(params, x, y):
        step = exact_ihvp(objective, params, jax.grad(objective)(params, x, y), x, y)
        return jax.tree.map(jnp.subtract, params, step)

    def fit(x, y):
        params = init
        for _ in range(15):  # quadratic convergence: far past float64 precision
            params = newton_step(params, x, y)
        return params

    params = fit(x, y)
    test_loss = lambda p: batch_loss(apply, cross_entropy)(p, x_test, y_test)
    # Predicted change of the test loss when removing point i: (1/n) ∇L_testᵀ H⁻¹ ∇ℓ_i.
    h_inv_g = exact_ihvp(objective, params, jax.grad(test_loss)(params), x, y)
    train_grads = per_example_grads(apply, cross_entropy, params, x, y)
    predicted = np.asarray(jax.vmap(lambda g: sum(jnp.vdot(a, b) for a, b in zip(
        jax.tree.leaves(h_inv_g), jax.tree.leaves(g), strict=True)))(train_grads)) / n  # fmt: skip
    actual = np.array([float(test_loss(fit(np.delete(x, i, 0), np.delete(y, i)))) - float(test_loss(params))
                       for i in range(n)])  # fmt: skip
    assert spearmanr(predicted, actual).statistic >= 0.95


# --------------------------------------------------------------------------- errors


def test_clear_errors():
    from jaxpoison.influence import FactorError, UntrackedParametersError

    with pytest.raises(ValueError, match="damping"):
        ScoreConfig(damping=-1.0)
    with pytest.raises(ValueError, match="damping"):
        LissaConfig(damping=-0.1)
    with pytest.raises(ValueError, match="unknown factor strategy 'diag'"):
        FactorConfig(strategy="diag")
    with pytest.raises(ValueError, match="unknown measurement"):
        ScoreConfig(measurement="accuracy")
    model = f64_model("cnn", (8, 8, 1), 4, width=2, hidden=6)
    data = tiny_data(n=6)
    with pytest.raises(ValueError, match="query images have shape"):
        pairwise_scores(model, data, np.zeros((2, 9, 9, 1)), np.zeros(2, int), None, progress=False)
    bad = model.replace(params=jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), model.params))
    with pytest.raises(FactorError, match="NaN or Inf"):
        fit_factors(bad, data, progress=False)
    resnet = f64_model("resnet18", (8, 8, 3), 4, width=4)
    with pytest.raises(UntrackedParametersError, match=r"bn1\.scale"):
        fit_factors(resnet, tiny_data(n=4, shape=(8, 8, 3)), FactorConfig(on_untracked="error"), progress=False)
    factors = fit_factors(model, data, FactorConfig(fisher="empirical", batch_size=3), progress=False)
    other = f64_model("cnn", (8, 8, 1), 4, seed=1, width=2, hidden=6)
    with pytest.raises(FactorError, match="other model parameters"):
        pairwise_scores(other, data, data.images[:1], data.labels[:1], factors, progress=False)
    with pytest.raises(FactorError, match="another training set"):
        pairwise_scores(model, tiny_data(n=6, seed=3), data.images[:1], data.labels[:1], factors, progress=False)


def test_digits_cnn_scores_are_finite_in_float32():
    # The production dtype on a real dataset: EK-FAC with the default (true) Fisher.
    with jax.enable_x64(False):
        data = load_dataset("digits", "train").subset(range(200))
        model = to_functional(create_model("cnn", data.image_shape, 10, width=4, hidden=16), data.mean, data.std)
        factors = fit_factors(model, data, FactorConfig(batch_size=64), progress=False)
        scores = pairwise_scores(model, data, data.images[:3], data.labels[:3], factors,
                                 ScoreConfig(damping=None), progress=False)  # fmt: skip
        assert scores.values.shape == (3, 200) and np.all(np.isfinite(scores.values))
        assert scores.meta["strategy"] == "ekfac" and scores.meta["fisher"] == "true"
        assert "supports" in scores.meta["sign"]


def test_parameters_that_do_not_fit_the_model_are_refused():
    model = f64_model("cnn", (8, 8, 1), 4, width=2, hidden=6)
    other_structure = model.replace(params=f64_model("mlp", (8, 8, 1), 4).params)
    with pytest.raises(ValueError, match="do not fit the model"):
        fit_factors(other_structure, tiny_data(n=4), progress=False)
    wider = f64_model("cnn", (8, 8, 1), 4, width=2, hidden=7)  # fc1/fc2 shapes differ
    params = jax.tree.map(lambda a: a, model.params)
    params["fc2"]["kernel"] = wider.params["fc2"]["kernel"]
    mixed = model.replace(params=params)
    with pytest.raises(ValueError, match="do not fit the model"):
        fit_factors(mixed, tiny_data(n=4), progress=False)
    with pytest.raises(ValueError, match="do not fit the model"):
        pairwise_scores(mixed, tiny_data(n=4), np.zeros((1, 8, 8, 1)), np.zeros(1, int), None, progress=False)


def test_cross_entropy_keeps_its_gradient_for_confident_points():
    # Margin 20: float32 softmax rounds p_y to 1, which zeroes the label's gradient in
    # the softmax − onehot form. The margin form must match the float64 gradient.
    import optax

    logits = np.array([[20.0, 0.0, -1.0], [0.3, -0.2, 0.1], [-3.0, 25.0, 2.0]])
    labels = np.array([0, 2, 1])
    exact = jax.vmap(jax.grad(lambda z, t: optax.softmax_cross_entropy_with_integer_labels(z, t)))(
        jnp.asarray(logits, jnp.float64), jnp.asarray(labels)
    )
    ours = jax.vmap(jax.grad(cross_entropy))(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(exact), rtol=1e-4, atol=0)
    naive = jax.vmap(jax.grad(lambda z, t: optax.softmax_cross_entropy_with_integer_labels(z, t)))(
        jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
    )
    assert float(naive[0, 0]) == 0.0  # the defect this form avoids
    # batched call and value agree with the textbook formula
    values = cross_entropy(jnp.asarray(logits, jnp.float64), jnp.asarray(labels))
    # log(Σ_j e^{z_j}) − z_y = log1p(Σ_{j≠y} e^{z_j − z_y}), free of cancellation
    gaps = logits - logits[np.arange(3), labels][:, None]
    gaps[np.arange(3), labels] = -np.inf
    reference = np.log1p(np.exp(gaps).sum(1))
    np.testing.assert_allclose(np.asarray(values), reference, rtol=1e-12)


def test_lissa_python_and_scan_drivers_agree():
    # Same minibatch draws, same recursion: the two drivers differ only in how steps are run.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5))
    x = jnp.asarray(a)

    def batch_hvp(u, idx):  # Hessian of the mean squared error on the minibatch
        xb = x[idx]
        return xb.T @ (xb @ u) / xb.shape[0] * 2.0

    v = jnp.asarray(rng.normal(size=5))
    results = {}
    for loop in ("scan", "python"):
        config = LissaConfig(damping=0.1, scale=20.0, depth=60, repeats=2, batch_size=8, loop=loop)
        results[loop] = lissa(batch_hvp, v, 40, config, jax.random.key(3))
    np.testing.assert_allclose(np.asarray(results["python"][0]), np.asarray(results["scan"][0]), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(results["python"][1].norms), np.asarray(results["scan"][1].norms),
                               rtol=1e-10)  # fmt: skip
    with pytest.raises(ValueError, match="loop"):
        LissaConfig(loop="while")


# --------------------------------------------------------------------------- a transformer in NNX


class TinyTransformer(nnx.Module):
    """Token classifier: embeddings, one multi-head self-attention block with an MLP, mean-pooled head."""

    def __init__(self, vocab=11, length=5, width=8, heads=2, classes=3, *, rngs):
        self.embed = nnx.Embed(vocab, width, param_dtype=jnp.float64, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False,
                                                param_dtype=jnp.float64, rngs=rngs)  # fmt: skip
        self.ff1 = nnx.Linear(width, 16, param_dtype=jnp.float64, rngs=rngs)
        self.ff2 = nnx.Linear(16, width, param_dtype=jnp.float64, rngs=rngs)
        self.head = nnx.Linear(width, classes, param_dtype=jnp.float64, rngs=rngs)

    def features(self, tokens):
        h = self.embed(tokens)
        h = h + self.attention(h)
        h = h + self.ff2(jax.nn.gelu(self.ff1(h)))  # dense layers at every position: positions are summed
        return h.mean(axis=1)

    def __call__(self, tokens):
        return self.head(self.features(tokens))


def assert_token_model_capture_and_ekfac_are_exact(model, layers):
    """On 6 token sequences: captured per-example layer gradients equal vmap(grad), EK-FAC equals the dense one."""
    tokens = jax.random.randint(jax.random.key(1), (6, 5), 0, 11)
    y = jax.random.randint(jax.random.key(2), (6,), 0, 3)
    _, captured = capture(model, layers, tokens, y, cross_entropy)
    reference = per_example_grads(model.bind(), cross_entropy, model.params, tokens, y)
    for layer in layers:
        got = per_example_layer_gradients(*captured[layer.name])
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)
    data = Dataset(np.asarray(tokens), np.asarray(y), ("a", "b", "c"), None, None,
                   Provenance("synthetic", "tokens", "train"), kind="tokens")  # fmt: skip
    config = FactorConfig(strategy="ekfac", fisher="empirical", batch_size=4, on_untracked="ignore")
    factors = fit_factors(model, data, config, progress=False)
    # The fit runs jitted; XLA's fused float64 exp differs from op-by-op by ~1e-9 in the attention's
    # gradients, so the dense reference is jitted too.
    reference = jax.jit(lambda p: per_example_grads(model.bind(), cross_entropy, p, tokens, y))(model.params)
    assert_ekfac_eigenvalues_equal_dense(factors, reference)


def test_an_nnx_transformers_captured_gradients_and_ekfac_equal_the_dense_references():
    model = to_functional(TinyTransformer(rngs=nnx.Rngs(0)))
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["attention.key", "attention.out", "attention.query",
                                                "attention.value", "ff1", "ff2", "head"]  # fmt: skip
    assert untracked == ["embed.embedding"]
    assert {layer.name: (layer.in_dim, layer.out_features) for layer in layers}["attention.out"] == (8 + 1, 8)
    assert_token_model_capture_and_ekfac_are_exact(model, layers)


class EinsumClassifier(nnx.Module):
    """Tokens → embeddings → two einsum projections at every position (one over two output axes) → head."""

    def __init__(self, *, rngs):
        self.embed = nnx.Embed(11, 4, param_dtype=jnp.float64, rngs=rngs)
        self.project = nnx.Einsum("btd,dhk->bthk", (4, 2, 3), (2, 3), param_dtype=jnp.float64, rngs=rngs)
        self.mix = nnx.Einsum("...hk,hkf->...f", (2, 3, 5), None, param_dtype=jnp.float64, rngs=rngs)
        self.heads = nnx.Einsum("nta,hab->nthb", (2, 4, 3), (2, 3), param_dtype=jnp.float64, rngs=rngs)
        self.head = nnx.Linear(5, 3, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        h = jnp.tanh(self.mix(jnp.tanh(self.project(h)))) + 0.0 * self.heads(h).sum((-1, -2))[..., None]
        return self.head(h.mean(axis=1))


def test_einsum_projections_are_captured_like_dense_layers_and_other_equations_are_untracked():
    model = to_functional(EinsumClassifier(rngs=nnx.Rngs(0)))
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["head", "mix", "project"]
    # "nta,hab->nthb": the kernel's head axis is not a trailing projection, so it is reported
    assert untracked == ["embed.embedding", "heads.bias", "heads.kernel"]
    shapes = {layer.name: (layer.in_dim, layer.out_features) for layer in layers}
    assert shapes["project"] == (4 + 1, 6) and shapes["mix"] == (6, 5)
    assert_token_model_capture_and_ekfac_are_exact(model, layers)


# --------------------------------------------------------------------------- low-rank queries, dtype policy


@pytest.mark.parametrize("factored", [True, False])
def test_full_rank_query_factors_give_the_exact_scores_by_either_contraction(scored_setup, monkeypatch, factored):
    from jaxpoison.influence import scores as scores_module

    model, data, queries, factors = scored_setup
    config = ScoreConfig(damping=1e-3, batch_size=4)
    full = pairwise_scores(model, data, queries.images, queries.labels, factors, config, progress=False).values
    monkeypatch.setattr(scores_module, "factored_is_cheaper", lambda *shape: factored)
    scores_module._pairwise_batch.clear_cache()  # the path is chosen while tracing
    try:
        low = pairwise_scores(model, data, queries.images, queries.labels, factors,
                              dataclasses.replace(config, query_rank=10_000), progress=False)  # fmt: skip
    finally:
        scores_module._pairwise_batch.clear_cache()
    np.testing.assert_allclose(low.values, full, rtol=1e-9, atol=1e-12)
    assert low.meta["query_rank"] == 10_000


def test_rank_r_scores_are_those_of_the_best_rank_r_query_gradients(scored_setup):
    model, data, queries, _ = scored_setup
    layers = model_layers(model)
    grads = query_gradients(model, layers, queries.images, queries.labels, margin_measurement)
    truncated = {}
    for name, w in grads.items():
        u, s, vt = np.linalg.svd(np.asarray(w), full_matrices=False)
        truncated[name] = jnp.asarray((u[..., :2] * s[:, None, :2]) @ vt[:, :2, :])
    config = ScoreConfig(damping=1e-3, batch_size=4)
    want = pairwise_scores(model, data, queries.images, queries.labels, None, config, query_grads=truncated,
                           progress=False).values  # fmt: skip
    got = pairwise_scores(model, data, queries.images, queries.labels, None, dataclasses.replace(config, query_rank=2),
                          progress=False).values  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    full = pairwise_scores(model, data, queries.images, queries.labels, None, config, progress=False).values
    assert not np.allclose(got, full, rtol=1e-3)  # rank 2 is an approximation here, not the full scores


def test_factored_contraction_is_chosen_by_multiply_adds():
    from jaxpoison.influence.scores import factored_is_cheaper

    assert factored_is_cheaper(1, 3137, 128, 51, 8)  # the CNN's 3136→128 layer: (in+out)·Q·r ≪ in·Q·out
    assert not factored_is_cheaper(1, 3137, 128, 51, 128)
    assert not factored_is_cheaper(196, 288, 64, 51, 8)  # a convolution's positions multiply the factored cost


def test_bfloat16_contractions_agree_with_float32_and_bad_settings_are_refused():
    with jax.enable_x64(False):
        model = create_model("cnn", (8, 8, 1), 4, seed=0, width=4, hidden=8)
        model = to_functional(model)
        data = tiny_data(n=40).replace(images=tiny_data(n=40).images.astype(np.float32))
        queries = tiny_data(n=3, seed=7)
        qi = queries.images.astype(np.float32)
        f32 = pairwise_scores(model, data, qi, queries.labels, None, ScoreConfig(batch_size=8, dtype="float32"),
                              progress=False).values  # fmt: skip
        bf16 = pairwise_scores(model, data, qi, queries.labels, None, ScoreConfig(batch_size=8, dtype="bfloat16"),
                               progress=False)  # fmt: skip
    assert bf16.values.dtype == np.float32 and bf16.meta["dtype"] == "bfloat16"
    assert not np.array_equal(bf16.values, f32)  # the contractions did run in bfloat16
    for q in range(3):
        assert spearmanr(bf16.values[q], f32[q])[0] > 0.99
    with pytest.raises(ValueError, match="query_rank must be an integer ≥ 1"):
        ScoreConfig(query_rank=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ScoreConfig(dtype="float16")


def test_bfloat16_factor_sums_agree_with_float32():
    with jax.enable_x64(False):
        model = to_functional(create_model("cnn", (8, 8, 1), 4, seed=0, width=4, hidden=8))
        data = tiny_data(n=40).replace(images=tiny_data(n=40).images.astype(np.float32))
        fits = {d: fit_factors(model, data, FactorConfig(fisher="empirical", batch_size=8, dtype=d), progress=False)
                for d in ("float32", "bfloat16")}  # fmt: skip
    for layer in fits["float32"].layers:
        want, got = (np.asarray(fits[d].blocks[layer.name]["eigenvalues"]) for d in ("float32", "bfloat16"))
        assert not np.array_equal(got, want)  # the sums did run in bfloat16
        np.testing.assert_allclose(got, want, rtol=0.05, atol=0.02 * want.max(), err_msg=layer.name)
    assert fits["bfloat16"].meta["compute_dtype"] == "bfloat16"
    assert FactorConfig(dtype="bfloat16").sums_hash() != FactorConfig().sums_hash()  # never resumed across dtypes
    with pytest.raises(ValueError, match=r"FactorConfig\.dtype must be one of"):
        FactorConfig(dtype="int8")
