"""Flax Linen models through jaxpoison: the same CNN in NNX and Linen, weights copied, gives the same numbers.

Everything is float64 and compared at 1e-8 or tighter: layer discovery, captured
per-example gradients (against ``vmap(grad)``), EK-FAC factors, pairwise scores and
Δ-Influence flags. A dense layer applied over sequence positions (a transformer-style
projection on token embeddings) is captured with positions summed, like a convolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxpoison.influence import (
    cross_entropy,
    find_layers,
    layer_gradient,
    per_example_grads,
)
from jaxpoison.influence.capture import capture, per_example_layer_gradients
from jaxpoison.models import from_linen
from jaxpoison.models.layers import max_pool_2x2
from jaxpoison.training import adam_recipe, evaluate, train
from tests.twins import CLASSES, MEAN, SHAPE, STD, assert_twin_scores_alike, nnx_reference, tiny_data


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class LinenCNN(nn.Module):
    """jaxpoison's NNX ``CNN``, written in Linen with the same parameter names and layouts."""

    num_classes: int
    width: int = 2
    hidden: int = 6

    def setup(self):
        self.conv1 = nn.Conv(self.width, (3, 3), padding="SAME", param_dtype=jnp.float64)
        self.conv2 = nn.Conv(2 * self.width, (3, 3), padding="SAME", param_dtype=jnp.float64)
        self.fc1 = nn.Dense(self.hidden, param_dtype=jnp.float64)
        self.fc2 = nn.Dense(self.num_classes, param_dtype=jnp.float64)

    def features(self, x):
        x = max_pool_2x2(jax.nn.relu(self.conv1(x)))
        x = max_pool_2x2(jax.nn.relu(self.conv2(x)))
        return jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.fc2(self.features(x))


@pytest.fixture(scope="module")
def twins():
    """The NNX CNN in float64 and its Linen twin holding the very same weights."""
    with jax.enable_x64(True):
        nnx_model, weights = nnx_reference()
        linen_model = from_linen(LinenCNN(CLASSES), {"params": weights}, SHAPE, mean=MEAN, std=STD)
    return nnx_model, linen_model


def test_the_linen_twin_computes_the_same_logits_and_features(twins):
    nnx_model, linen_model = twins
    x = jax.random.normal(jax.random.key(0), (5, *SHAPE), jnp.float64)
    for fn in ("logits", "features"):
        got = getattr(linen_model, fn)(x)
        np.testing.assert_allclose(got, getattr(nnx_model, fn)(x), rtol=1e-12)


def test_linen_layers_are_found_in_call_order_with_nothing_untracked(twins):
    nnx_model, linen_model = twins
    linen_layers, untracked = find_layers(linen_model)
    nnx_layers, _ = find_layers(nnx_model)
    assert untracked == []
    assert [(a.name, a.kind, a.kernel_shape, a.has_bias) for a in linen_layers] == [
        (b.name, b.kind, b.kernel_shape, b.has_bias) for b in nnx_layers
    ]
    assert [a.conv[:3] for a in linen_layers if a.conv] == [((3, 3), 1, "SAME")] * 2


def test_linen_captured_gradients_equal_vmap_grad(twins):
    _, model = twins
    layers, _ = find_layers(model)
    x = jax.random.normal(jax.random.key(1), (3, *SHAPE), jnp.float64)
    y = jnp.array([0, 3, 1])
    _, captured = capture(model, layers, x, y, cross_entropy)
    reference = per_example_grads(model.bind(), cross_entropy, model.params, x, y)
    for layer in layers:
        got = per_example_layer_gradients(*captured[layer.name])
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)


def test_factors_scores_and_delta_influence_flags_equal_the_nnx_models(twins):
    nnx_model, linen_model = twins
    assert_twin_scores_alike(nnx_model, linen_model)


def test_a_linen_model_trains_and_evaluates_through_the_library():
    data = tiny_data(64, 3)
    module = LinenCNN(CLASSES)
    model = from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, *SHAPE))), SHAPE, mean=MEAN, std=STD)
    result = train(model, data, adam_recipe(epochs=2, batch_size=16, learning_rate=1e-2), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0.0 <= evaluate(result.model, data).accuracy <= 1.0


class BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(5, param_dtype=jnp.float64)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x)
        return nn.Dense(CLASSES, param_dtype=jnp.float64)(jax.nn.relu(x))


def test_linen_batch_statistics_are_state_that_training_updates():
    data = tiny_data(32, 4)
    module = BatchNormNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    model = from_linen(module, variables, SHAPE, eval_kwargs={"train": False}, train_kwargs={"train": True},
                       mean=MEAN, std=STD)  # fmt: skip
    assert set(model.state) == {"batch_stats"}
    result = train(model, data, adam_recipe(epochs=1, batch_size=16), progress=False)
    mean = lambda state: state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean(model.state), mean(result.state))  # the running mean moved
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["Dense_0", "Dense_1"]
    assert sorted(untracked) == ["BatchNorm_0.bias", "BatchNorm_0.scale"]  # listed by name, as for NNX


class TokenClassifier(nn.Module):
    """Embeddings → a dense projection applied at every position → mean-pool → a dense head."""

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(11, 6, param_dtype=jnp.float64)(tokens)
        h = jax.nn.gelu(nn.Dense(7, param_dtype=jnp.float64, name="proj")(h))  # [N, T, 7]: positions are an extra axis
        return nn.Dense(3, param_dtype=jnp.float64, name="head")(h.mean(axis=1))


def test_a_dense_layer_over_sequence_positions_is_captured_with_positions_summed():
    module = TokenClassifier()
    tokens = jax.random.randint(jax.random.key(2), (4, 5), 0, 11)
    model = from_linen(module, module.init(jax.random.key(0), tokens), (5,), input_dtype="int32")
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["proj", "head"] and untracked == ["Embed_0.embedding"]
    y = jnp.array([0, 2, 1, 2])
    _, captured = capture(model, layers, tokens, y, cross_entropy)
    assert captured["proj"][0].shape == (4, 5, 7)  # [N, positions, in + bias]
    reference = per_example_grads(model.bind(), cross_entropy, model.params, tokens, y)
    for layer in layers:
        got = per_example_layer_gradients(*captured[layer.name])
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)


def test_from_linen_refuses_what_is_not_a_linen_model():
    from jaxpoison.errors import InputError

    with pytest.raises(InputError, match=r"takes a flax\.linen Module"):
        from_linen(object(), {"params": {}}, SHAPE)
    with pytest.raises(InputError, match="with a 'params' collection"):
        from_linen(LinenCNN(CLASSES), {"weights": {}}, SHAPE)
