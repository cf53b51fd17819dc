"""Plain apply(params, x) models with declared kernels at the model boundary (jaxpoison.models.from_apply)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.influence import FactorConfig, cross_entropy, fit_factors, per_example_grads
from jaxpoison.influence.capture import capture, find_layers, layer_gradient, per_example_layer_gradients
from jaxpoison.models import from_apply
from jaxpoison.models.layers import max_pool_2x2
from jaxpoison.models.plain import conv
from jaxpoison.training import adam_recipe, evaluate, train
from tests.twins import (
    CLASSES,
    MEAN,
    SHAPE,
    STD,
    assert_ekfac_eigenvalues_equal_dense,
    assert_twin_scores_alike,
    nnx_reference,
    tiny_data,
)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def cnn_features(p, x):
    """jaxpoison's CNN written by hand: what a user's hand-written model looks like."""
    x = max_pool_2x2(jax.nn.relu(conv(x, p["conv1"]["kernel"]) + p["conv1"]["bias"][None, None, None]))
    x = max_pool_2x2(jax.nn.relu(conv(x, p["conv2"]["kernel"]) + p["conv2"]["bias"][None, None, None]))
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["fc1"]["kernel"] + p["fc1"]["bias"][None])


def cnn_apply(p, x):
    return cnn_features(p, x) @ p["fc2"]["kernel"] + p["fc2"]["bias"][None]


CNN_DENSE = {"fc1/kernel": "fc1/bias", "fc2/kernel": "fc2/bias"}
CNN_CONV = {"conv1/kernel": "conv1/bias", "conv2/kernel": "conv2/bias"}


@pytest.fixture(scope="module")
def twins():
    """The NNX CNN in float64 and the hand-written CNN holding the very same weights."""
    with jax.enable_x64(True):
        nnx_model, weights = nnx_reference()
        plain = from_apply(cnn_apply, weights, SHAPE, dense=CNN_DENSE, conv=CNN_CONV, features=cnn_features,
                           mean=MEAN, std=STD)  # fmt: skip
    return nnx_model, plain


def test_the_plain_twin_computes_the_same_logits_and_features(twins):
    nnx_model, plain = twins
    x = jax.random.normal(jax.random.key(0), (5, *SHAPE), jnp.float64)
    np.testing.assert_allclose(plain(x), nnx_model(x), rtol=1e-12)
    np.testing.assert_allclose(plain.features(x), nnx_model.features(x), rtol=1e-12)


def test_declared_layers_are_found_in_call_order_with_their_convolution_settings(twins):
    nnx_model, plain = twins
    layers, untracked = find_layers(plain)
    assert untracked == [] and [layer.name for layer in layers] == ["conv1", "conv2", "fc1", "fc2"]
    describe = lambda layer: (layer.kind, layer.kernel_shape, layer.in_dim, layer.out_features, layer.has_bias)
    assert [describe(a) for a in layers] == [describe(b) for b in find_layers(nnx_model)[0]]
    assert [a.conv[:3] for a in layers if a.conv] == [((3, 3), (1, 1), "SAME")] * 2


def test_factors_scores_and_delta_influence_flags_equal_the_nnx_models(twins):
    nnx_model, plain = twins
    assert_twin_scores_alike(nnx_model, plain)


def mlp_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["hidden"]["w"] + p["hidden"]["b"][None])
    return h @ p["out"]["w"] + p["out"]["b"][None]


def test_a_plain_mlp_equals_the_nnx_mlp():
    from flax import nnx

    from jaxpoison.models import create_model, to_functional

    reference = to_functional(create_model("mlp", SHAPE, CLASSES, hidden=(7,)), MEAN, STD)
    reference = reference.replace(params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), reference.params))
    w = nnx.to_pure_dict(reference.params)
    params = {"hidden": {"w": w["hidden"][0]["kernel"], "b": w["hidden"][0]["bias"]},
              "out": {"w": w["head"]["kernel"], "b": w["head"]["bias"]}}  # fmt: skip
    plain = from_apply(mlp_apply, params, SHAPE, dense={"hidden/w": "hidden/b", "out/w": "out/b"}, mean=MEAN, std=STD)
    data = tiny_data(16, 1)
    np.testing.assert_allclose(plain(data.images), reference(data.images), rtol=1e-12)
    config = FactorConfig(strategy="ekfac", fisher="empirical", batch_size=8)
    got, want = fit_factors(plain, data, config, progress=False), fit_factors(reference, data, config, progress=False)
    assert [layer.name for layer in got.layers] == ["hidden", "out"]
    for name, other in (("hidden", "hidden.0"), ("out", "head")):
        block, other = got.blocks[name], want.blocks[other]
        for key in ("a_cov", "s_cov", "eigenvalues"):
            np.testing.assert_allclose(block[key], other[key], rtol=1e-9, atol=1e-13, err_msg=f"{name}.{key}")


# --------------------------------------------------------------------------- a small transformer on tokens

VOCAB, LENGTH, WIDTH = 13, 6, 8


def transformer_features(p, tokens):
    """One pre-norm-free transformer block (single-head attention and an MLP), mean-pooled."""
    h = p["embed"][tokens] + p["position"][None]  # [N, T, D]: lookups, not dense layers
    q, k, v = h @ p["q"]["w"], h @ p["k"]["w"], h @ p["v"]["w"]  # dense layers over the positions axis
    attention = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / np.sqrt(WIDTH), axis=-1)
    h = h + jnp.einsum("nts,nsd->ntd", attention, v) @ p["o"]["w"]
    h = h + jax.nn.gelu(h @ p["ff1"]["w"] + p["ff1"]["b"][None, None]) @ p["ff2"]["w"] + p["ff2"]["b"][None, None]
    return h.mean(axis=1)


def transformer_apply(p, tokens):
    return transformer_features(p, tokens) @ p["head"]["w"] + p["head"]["b"][None]


TRANSFORMER_DENSE = {"q/w": None, "k/w": None, "v/w": None, "o/w": None, "ff1/w": "ff1/b", "ff2/w": "ff2/b",
                     "head/w": "head/b"}  # fmt: skip


def transformer(seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    normal = lambda *shape: jax.random.normal(next(keys), shape, jnp.float64) / np.sqrt(shape[0])
    params = {"embed": normal(VOCAB, WIDTH), "position": normal(LENGTH, WIDTH),
              **{name: {"w": normal(WIDTH, WIDTH)} for name in ("q", "k", "v", "o")},
              "ff1": {"w": normal(WIDTH, 16), "b": normal(16) * 0.1},
              "ff2": {"w": normal(16, WIDTH), "b": normal(WIDTH)},
              "head": {"w": normal(WIDTH, 3), "b": normal(3)}}  # fmt: skip
    return from_apply(transformer_apply, params, (LENGTH,), dense=TRANSFORMER_DENSE, features=transformer_features,
                      input_dtype="int32")  # fmt: skip


def token_data(n, seed):
    from jaxpoison.data import Dataset, Provenance

    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, VOCAB, (n, LENGTH)).astype(np.int32), rng.integers(0, 3, n).astype(np.int32),
                   ("a", "b", "c"), np.zeros(1, np.float32), np.ones(1, np.float32),
                   Provenance("synthetic", "tokens", "train"), kind="tokens")  # fmt: skip


def test_a_transformers_captured_per_example_gradients_equal_vmap_grad():
    model = transformer()
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["q", "k", "v", "o", "ff1", "ff2", "head"]
    assert untracked == ["embed", "position"]  # listed by name, never silently dropped
    tokens = jax.random.randint(jax.random.key(3), (4, LENGTH), 0, VOCAB)
    y = jnp.array([0, 2, 1, 2])
    _, captured = capture(model, layers, tokens, y, cross_entropy)
    assert captured["q"][0].shape == (4, LENGTH, WIDTH)  # [N, positions, in]: positions are summed later
    reference = per_example_grads(model.bind(), cross_entropy, model.params, tokens, y)
    for layer in layers:
        got = per_example_layer_gradients(*captured[layer.name])
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)


def test_a_transformers_ekfac_eigenvalues_equal_the_dense_construction():
    model, data = transformer(), token_data(10, 0)
    config = FactorConfig(strategy="ekfac", fisher="empirical", batch_size=4, on_untracked="ignore")
    factors = fit_factors(model, data, config, progress=False)
    grads = per_example_grads(model.bind(), cross_entropy, model.params, jnp.asarray(data.images),
                              jnp.asarray(data.labels))  # fmt: skip
    assert_ekfac_eigenvalues_equal_dense(factors, grads)


def test_a_plain_model_trains_and_evaluates_through_the_library():
    data = tiny_data(64, 3)
    _, weights = nnx_reference()
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), weights)
    model = from_apply(cnn_apply, params, SHAPE, dense=CNN_DENSE, conv=CNN_CONV, mean=MEAN, std=STD)
    result = train(model, data, adam_recipe(epochs=2, batch_size=16, learning_rate=1e-2), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0.0 <= evaluate(result.model, data).accuracy <= 1.0


# --------------------------------------------------------------------------- refusals


def test_a_declared_kernel_used_outside_matmul_or_conv_is_refused_by_name():
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    model = from_apply(lambda p, x: jnp.dot(x, p["w"]) + p["b"][None], params, (4,), dense={"w": "b"})
    np.testing.assert_allclose(model(jnp.ones((2, 4))), 4.0)  # outside capture the model runs as written
    with pytest.raises(ValueError, match=r"x @ kernel.*jaxpoison.models.plain.conv"):
        find_layers(model)


@pytest.mark.parametrize("kwargs,match", [
    ({"dense": {"missing/w": None}}, "missing/w is not in the parameters"),
    ({"dense": {"w": "other/b"}}, "must sit beside its kernel"),
    ({"dense": {"w": "c"}}, r"needs \(3,\)"),
    ({"conv": ["w"]}, "must have 4 axes"),
    ({"dense": ["w", ("w",)]}, "declared twice"),
    ({"dense": [3]}, "must be a string"),
])  # fmt: skip
def test_bad_declarations_are_refused(kwargs, match):
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3), "c": jnp.zeros(2), "other": {"b": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=match):
        from_apply(lambda p, x: x @ p["w"], params, (4,), **kwargs)


def test_unused_and_shared_kernels_are_refused_when_layers_are_found():
    params = {"w": jnp.ones((4, 4)), "u": jnp.ones((4, 2))}
    unused = from_apply(lambda p, x: x @ p["u"], {"w": params["w"], "u": params["u"]}, (4,), dense=["w", "u"])
    with pytest.raises(ValueError, match="w are never used"):
        find_layers(unused)
    shared = from_apply(lambda p, x: (x @ p["w"]) @ p["w"] @ p["u"], params, (4,), dense=["w", "u"])
    with pytest.raises(ValueError, match="used more than once"):
        find_layers(shared)


def test_a_plain_model_without_features_refuses_feature_detectors():
    model = from_apply(lambda p, x: x @ p["w"], {"w": jnp.ones((4, 3))}, (4,), dense=["w"])
    with pytest.raises(ValueError, match="no features function"):
        model.features(jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="takes a function"):
        from_apply("not a function", {"w": jnp.ones((4, 3))}, (4,))
