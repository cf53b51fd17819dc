"""Model architectures and the functional boundary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.models import count_params, create_model, output_layer, replace_layer, to_functional


@pytest.mark.parametrize(
    "name,shape,classes",
    [("mlp", (8, 8, 1), 10), ("logreg", (8, 8, 1), 3), ("cnn", (28, 28, 1), 10), ("cnn", (8, 8, 1), 10),
     ("resnet18", (32, 32, 3), 10), ("vgg16", (32, 32, 3), 10)],
)  # fmt: skip
def test_output_and_feature_shapes(name, shape, classes):
    kw = {"width": 8} if name == "resnet18" else {}
    m = to_functional(create_model(name, shape, classes, **kw))
    x = jnp.zeros((2, *shape))
    assert m(x).shape == (2, classes)
    assert m.features(x).ndim == 2


def test_standard_parameter_counts():
    # Counts of the standard CIFAR architectures (PyTorch's ResNet-18 CIFAR variant and
    # the BatchNorm VGG-16 with a single 512->10 classifier), and the 422k-parameter CNN.
    assert count_params(to_functional(create_model("resnet18", (32, 32, 3), 10)).params) == 11_173_962
    assert count_params(to_functional(create_model("vgg16", (32, 32, 3), 10)).params) == 14_728_266
    assert count_params(to_functional(create_model("cnn", (28, 28, 1), 10)).params) == 421_642


def test_resnet_inference_mode_uses_running_statistics():
    m = to_functional(create_model("resnet18", (8, 8, 3), 4, width=4))
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 3))
    # Inference mode: an example's logits do not depend on the rest of the batch.
    full = m(x)
    alone = m(x[:1])
    np.testing.assert_allclose(full[:1], alone, rtol=1e-5, atol=1e-5)
    # Training mode: batch statistics are used and running averages move.
    logits, new_state = m.train_logits(x)
    assert not np.allclose(logits[:1], m.train_logits(x[:1])[0], atol=1e-4)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), m.state, new_state)
    assert max(jax.tree.leaves(moved)) > 0


def test_functional_model_is_a_pytree_that_crosses_jit():
    m = to_functional(create_model("cnn", (8, 8, 1), 10))
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    apply = jax.jit(lambda model, x: model(x))
    np.testing.assert_allclose(apply(m, x), m(x), rtol=1e-5)
    bound = m.bind()
    grads = jax.grad(lambda p: bound(p, x).sum())(m.params)
    assert jax.tree.structure(grads) == jax.tree.structure(m.params)
    apply(m, x + 1.0)
    # Another model of the same architecture shares the compiled program: the structure is compared by value.
    apply(to_functional(create_model("cnn", (8, 8, 1), 10, seed=3)), x)
    assert apply._cache_size() == 1
    # Its children are exactly the parameters and the state.
    assert jax.tree.leaves(m) == jax.tree.leaves((m.params, m.state))


def test_the_model_normalises_its_own_inputs():
    raw = to_functional(create_model("cnn", (8, 8, 1), 10))
    model = to_functional(create_model("cnn", (8, 8, 1), 10), mean=[0.25], std=[0.5])
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1))
    np.testing.assert_array_equal(model(x), raw((x - 0.25) / 0.5))
    np.testing.assert_array_equal(model.features(x), raw.features((x - 0.25) / 0.5))
    np.testing.assert_array_equal(model.train_logits(x)[0], raw.train_logits((x - 0.25) / 0.5)[0])
    assert not np.allclose(model(x), raw(x))
    # Normalisation is static metadata: models that normalise differently compile separately.
    assert jax.tree.structure(model) != jax.tree.structure(raw)
    assert model.with_normalization(None, None).normalization is None


@pytest.mark.parametrize("mean,std,match", [([0.5], [0.0], "positive"), ([0.5, 0.5], [1.0], "length"),
                                            ([float("nan")], [1.0], "finite")])  # fmt: skip
def test_bad_normalisation_is_refused(mean, std, match):
    with pytest.raises(ValueError, match=match):
        to_functional(create_model("mlp", (2, 2, 1), 3), mean, std)


def test_bad_model_requests():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="divisible by 4"):
        create_model("cnn", (30, 30, 1), 10)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        create_model("cnn", (28, 28), 10)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_max_pool_2x2_equals_reduce_window_pooling(shape):
    from flax import nnx

    from jaxpoison.models.layers import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(max_pool_2x2(x), nnx.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize(
    "name,shape,layer",
    [("mlp", (8, 8, 1), "head"), ("cnn", (28, 28, 1), "fc2"), ("resnet18", (32, 32, 3), "fc"),
     ("vgg16", (32, 32, 3), "fc")],
)  # fmt: skip
def test_output_layer_is_the_one_applied_to_the_features(name, shape, layer):
    kw = {"width": 8} if name == "resnet18" else {}
    model = to_functional(create_model(name, shape, 10, seed=0, **kw))
    assert output_layer(model, shape) == layer
    other = to_functional(create_model(name, shape, 10, seed=1, **kw))
    mixed = replace_layer(model, layer, other)
    assert jax.tree.structure(mixed.params) == jax.tree.structure(model.params)
    for group in model.params:
        source = other if group == layer else model
        for a, b in zip(jax.tree.leaves(mixed.params[group]), jax.tree.leaves(source.params[group]), strict=True):
            np.testing.assert_array_equal(a, b)
    # Features do not touch the output layer; logits do.
    x = jnp.ones((2, *shape))
    features = model.features(x)
    np.testing.assert_array_equal(mixed.features(x), features)
    assert not np.allclose(mixed(x), model(x))


def test_replace_layer_refuses_another_architecture():
    cnn = to_functional(create_model("cnn", (8, 8, 1), 10))
    mlp = to_functional(create_model("mlp", (8, 8, 1), 10))
    with pytest.raises(ValueError, match="same architecture"):
        replace_layer(cnn, "fc2", mlp)
