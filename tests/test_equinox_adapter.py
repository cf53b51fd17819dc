"""Equinox models through jaxpoison: the same CNN in NNX and Equinox, weights copied, gives the same numbers.

The Equinox twin is channel-first (``eqx.nn.Conv2d`` on CHW examples, OIHW kernels,
``[out, in]`` Linear weights); the adapter feeds it NHWC batches. Everything is float64
and compared at 1e-8 or tighter: logits, features, layer discovery, captured per-example
gradients (against ``vmap(grad)``), EK-FAC factors, pairwise scores and Δ-Influence flags.
"""

from __future__ import annotations

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.errors import InputError
from jaxpoison.influence import (
    cross_entropy,
    find_layers,
    layer_gradient,
    per_example_grads,
)
from jaxpoison.influence.capture import capture, per_example_layer_gradients
from jaxpoison.models import from_equinox
from jaxpoison.training import adam_recipe, evaluate, train
from tests.twins import CLASSES, MEAN, SHAPE, STD, assert_twin_scores_alike, nnx_reference, tiny_data


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _pool(x):
    """2×2 max-pooling of one CHW example."""
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


class EquinoxCNN(eqx.Module):
    """jaxpoison's NNX ``CNN`` in Equinox: channel-first convolutions, one example at a time."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, channels, num_classes, side, width=2, hidden=6, *, key):
        keys = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(channels, width, 3, padding="SAME", dtype=jnp.float64, key=keys[0])
        self.conv2 = eqx.nn.Conv2d(width, 2 * width, 3, padding="SAME", dtype=jnp.float64, key=keys[1])
        self.fc1 = eqx.nn.Linear((side // 4) ** 2 * 2 * width, hidden, dtype=jnp.float64, key=keys[2])
        self.fc2 = eqx.nn.Linear(hidden, num_classes, dtype=jnp.float64, key=keys[3])

    def features(self, x):
        x = _pool(jax.nn.relu(self.conv1(x)))
        x = _pool(jax.nn.relu(self.conv2(x)))
        # Flattened in HWC order, like the NNX model, so fc1 takes the very same weights.
        return jax.nn.relu(self.fc1(jnp.transpose(x, (1, 2, 0)).reshape(-1)))

    def __call__(self, x):
        return self.fc2(self.features(x))


@pytest.fixture(scope="module")
def twins():
    """The NNX CNN in float64 and its Equinox twin holding the very same weights."""
    with jax.enable_x64(True):
        nnx_model, w = nnx_reference()
        net = EquinoxCNN(SHAPE[-1], CLASSES, SHAPE[0], key=jax.random.key(1))
        net = eqx.tree_at(
            lambda m: (m.conv1.weight, m.conv1.bias, m.conv2.weight, m.conv2.bias, m.fc1.weight, m.fc1.bias,
                       m.fc2.weight, m.fc2.bias),
            net,
            (jnp.transpose(w["conv1"]["kernel"], (3, 2, 0, 1)), w["conv1"]["bias"][:, None, None],
             jnp.transpose(w["conv2"]["kernel"], (3, 2, 0, 1)), w["conv2"]["bias"][:, None, None],
             w["fc1"]["kernel"].T, w["fc1"]["bias"], w["fc2"]["kernel"].T, w["fc2"]["bias"]),
        )  # fmt: skip
        eqx_model = from_equinox(net, SHAPE, channels_first=True, mean=MEAN, std=STD)
    return nnx_model, eqx_model


def test_the_equinox_twin_computes_the_same_logits_and_features(twins):
    nnx_model, eqx_model = twins
    x = jax.random.normal(jax.random.key(0), (5, *SHAPE), jnp.float64)
    for fn in ("logits", "features"):
        got = getattr(eqx_model, fn)(x)
        np.testing.assert_allclose(got, getattr(nnx_model, fn)(x), rtol=1e-12)


def test_params_are_a_nested_dict_keyed_by_attribute_and_position(twins):
    _, eqx_model = twins
    assert eqx_model.state == {}
    assert {k: sorted(v) for k, v in eqx_model.params.items()} == {name: ["bias", "weight"] for name in
                                                                   ("conv1", "conv2", "fc1", "fc2")}  # fmt: skip
    mlp = from_equinox(eqx.nn.MLP(3, 2, 5, 2, key=jax.random.key(0)), (3,))
    assert sorted(mlp.params) == ["layers"] and sorted(mlp.params["layers"]) == ["0", "1", "2"]
    assert mlp.params["layers"]["1"]["weight"].shape == (5, 5)
    # The structure is a jit static argument: hashable, and equal for the same architecture.
    again = from_equinox(eqx.nn.MLP(3, 2, 5, 2, key=jax.random.key(0)), (3,))
    assert mlp.structure == again.structure and hash(mlp.structure) == hash(again.structure)


def test_equinox_layers_are_found_in_call_order_with_nothing_untracked(twins):
    nnx_model, eqx_model = twins
    eqx_layers, untracked = find_layers(eqx_model)
    nnx_layers, _ = find_layers(nnx_model)
    assert untracked == [] and [layer.name for layer in eqx_layers] == ["conv1", "conv2", "fc1", "fc2"]
    describe = lambda layer: (layer.kind, layer.in_dim, layer.out_features, layer.has_bias)
    assert [describe(a) for a in eqx_layers] == [describe(b) for b in nnx_layers]
    assert [a.conv[:2] for a in eqx_layers if a.conv] == [((3, 3), (1, 1))] * 2
    assert {a.layout for a in eqx_layers} == {"oi"} and {b.layout for b in nnx_layers} == {"io"}


def _captured_and_reference(model, layers, x, y):
    """Captured ``(a, g)`` per layer and ``vmap(grad)`` per-example gradients (jitted: op-by-op is slow)."""

    def both(params, x, y):
        _, captured = capture(model.replace(params=params), layers, x, y, cross_entropy)
        return captured, per_example_grads(model.bind(), cross_entropy, params, x, y)

    return jax.jit(both)(model.params, x, y)


def test_equinox_captured_gradients_equal_vmap_grad(twins):
    _, model = twins
    layers, _ = find_layers(model)
    x = jax.random.normal(jax.random.key(1), (3, *SHAPE), jnp.float64)
    y = jnp.array([0, 3, 1])
    captured, reference = _captured_and_reference(model, layers, x, y)
    for layer in layers:
        a, g = captured[layer.name]
        assert a.shape[-1] == layer.in_dim and g.shape[-1] == layer.out_features
        got = per_example_layer_gradients(a, g)
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)


def test_factors_scores_and_delta_influence_flags_equal_the_nnx_models(twins):
    nnx_model, eqx_model = twins
    assert_twin_scores_alike(nnx_model, eqx_model)


class FlatMLP(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(int(np.prod(SHAPE)), CLASSES, 16, 1, dtype=jnp.float64, key=key)

    def __call__(self, x):
        return self.mlp(x.reshape(-1))


def test_an_equinox_mlp_trains_and_evaluates_through_the_library():
    data = tiny_data(64, 3)
    model = from_equinox(FlatMLP(jax.random.key(0)), SHAPE, mean=MEAN, std=STD)
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["mlp.layers.0", "mlp.layers.1"] and untracked == []
    result = train(model, data, adam_recipe(epochs=3, batch_size=16, learning_rate=1e-2), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0.0 <= evaluate(result.model, data).accuracy <= 1.0


class Awkward(eqx.Module):
    """Layers capture cannot factor next to ones it can: each must be listed, not mis-factored."""

    embed: eqx.nn.Linear
    grouped: eqx.nn.Conv2d
    shared: eqx.nn.Linear
    proj: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        keys = jax.random.split(key, 5)
        self.embed = eqx.nn.Linear(2, 4, dtype=jnp.float64, key=keys[0])
        self.grouped = eqx.nn.Conv2d(4, 4, 1, groups=2, dtype=jnp.float64, key=keys[1])
        self.shared = eqx.nn.Linear(4, 4, dtype=jnp.float64, key=keys[2])
        self.proj = eqx.nn.Linear(4, 4, dtype=jnp.float64, key=keys[3])
        self.head = eqx.nn.Linear(4, 3, dtype=jnp.float64, key=keys[4])

    def __call__(self, x):  # one example: [T, 2] tokens' features
        h = jax.vmap(self.embed)(x)  # over positions inside the model: no single input per example
        h = self.grouped(h.T[:, :, None])[:, :, 0].T  # feature groups
        h = jnp.tanh(self.proj(h.mean(axis=0)))
        return self.head(self.shared(jnp.tanh(self.shared(h))))  # called twice


def test_untrackable_layers_are_listed_by_name_and_the_rest_is_exact():
    model = from_equinox(Awkward(jax.random.key(0)), (5, 2))
    layers, untracked = find_layers(model)
    assert [layer.name for layer in layers] == ["proj", "head"]
    assert sorted(untracked) == sorted(f"{n}.{p}" for n in ("embed", "grouped", "shared") for p in ("weight", "bias"))
    x = jax.random.normal(jax.random.key(1), (3, 5, 2), jnp.float64)
    y = jnp.array([0, 2, 1])
    captured, reference = _captured_and_reference(model, layers, x, y)
    for layer in layers:
        got = per_example_layer_gradients(*captured[layer.name])
        np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12, err_msg=layer.name)


class Strided(eqx.Module):
    """A convolution with every geometry option set, and no bias."""

    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        keys = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2),
                                  use_bias=False, dtype=jnp.float64, key=keys[0])  # fmt: skip
        self.head = eqx.nn.Linear(3 * 4 * 6, CLASSES, dtype=jnp.float64, key=keys[1])

    def __call__(self, x):
        return self.head(jnp.tanh(self.conv(x)).reshape(-1))


def test_a_strided_padded_dilated_convolution_is_captured_exactly():
    model = from_equinox(Strided(jax.random.key(0)), (8, 6, 2), channels_first=True)
    layers, untracked = find_layers(model)
    layer = layers[0]
    assert [t.name for t in layers] == ["conv", "head"] and untracked == []
    assert (layer.in_dim, layer.out_features, layer.has_bias) == (3 * 2 * 2, 3, False)
    x = jax.random.normal(jax.random.key(1), (3, 8, 6, 2), jnp.float64)
    captured, reference = _captured_and_reference(model, [layer], x, jnp.array([0, 2, 1]))
    assert captured["conv"][1].shape == (3, 4 * 6, 3)  # [N, H'·W', out]
    got = per_example_layer_gradients(*captured["conv"])
    np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12)


def test_from_equinox_refuses_what_it_cannot_take():
    with pytest.raises(InputError, match=r"takes an equinox\.Module"):
        from_equinox(object(), SHAPE)
    norm = eqx.nn.BatchNorm(3, "batch", mode="batch")
    stateful = eqx.nn.Sequential([eqx.nn.Linear(3, 3, key=jax.random.key(0)), norm])
    with pytest.raises(InputError, match="stateful layers"):
        from_equinox(stateful, (3,))
    model = from_equinox(eqx.nn.Linear(3, 2, key=jax.random.key(0)), (3,))
    with pytest.raises(InputError, match="no `features` method"):
        model.features(jnp.ones((1, 3)))


def test_jaxpoison_imports_without_loading_equinox():
    code = "import sys, jaxpoison.models, jaxpoison.influence; sys.exit('equinox' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_output_layer_of_an_equinox_model_is_found_for_unlearning(twins):
    from jaxpoison.models import output_layer, replace_layer

    nnx_model, eqx_model = twins
    assert output_layer(eqx_model, SHAPE) == "fc2" == output_layer(nnx_model, SHAPE)  # [classes, width] weight
    fresh = eqx_model.replace(params=jax.tree.map(jnp.zeros_like, eqx_model.params))
    reset = replace_layer(eqx_model, "fc2", fresh)  # what cf_reset does to the head
    assert not np.any(reset.params["fc2"]["weight"]) and np.array_equal(reset.params["fc1"]["weight"],
                                                                        eqx_model.params["fc1"]["weight"])  # fmt: skip
