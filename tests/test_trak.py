"""TRAK: exact formula when the projection is invertible, JL behaviour, ensembles, errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.data import normalize
from jaxpoison.influence import (
    TrakConfig,
    find_layers,
    flatten_batch,
    layer_gradient,
    margin_measurement,
    per_example_grads,
    trak_features,
    trak_scores,
)
from jaxpoison.influence.trak import kronecker_dims, kronecker_projections
from jaxpoison.models import create_model, to_functional
from tests.conftest import make_dataset


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _model(seed=0):
    # make_dataset's constants: the model normalises with them, as the references below do by hand.
    model = to_functional(create_model("logreg", (2, 2, 1), 3, seed=seed), mean=[0.5], std=[0.25])
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    return model.replace(params=cast(model.params), state=cast(model.state))


def _grads(model, data):
    x = normalize(jnp.asarray(data.images), data.mean, data.std)
    log_odds = lambda logits, y: -margin_measurement(logits, y)
    network = lambda p, x: model.structure.apply(p, model.state, x)  # the raw network, on normalised x
    grads = per_example_grads(network, log_odds, model.params, x, jnp.asarray(data.labels))
    return np.asarray(flatten_batch(grads))


@pytest.mark.parametrize("projection", ["kronecker", "dense"])
def test_square_projection_gives_the_exact_trak_formula(projection):
    model = _model()
    train = make_dataset(n=40, shape=(2, 2, 1), num_classes=3)
    queries = make_dataset(n=3, shape=(2, 2, 1), num_classes=3, seed=5)
    # 4·3 kernel + 3 bias: a square Gaussian projection is invertible, so TRAK is exact (Kronecker:
    # a 5×5 input and a 3×3 output-gradient projection, k = 15 = 5·3)
    d = 15
    config = TrakConfig(projection_dim=d, batch_size=8, projection=projection)
    scores = trak_scores(model, train, queries.images, queries.labels, config, progress=False)
    g, gq = _grads(model, train), _grads(model, queries)
    x = normalize(jnp.asarray(train.images), train.mean, train.std)
    p = np.asarray(jax.nn.softmax(model.structure.apply(model.params, model.state, x)))[np.arange(40), train.labels]
    want = gq @ np.linalg.solve(g.T @ g, g.T) * (1 - p)[None]
    np.testing.assert_allclose(scores.values, want, rtol=1e-6, atol=1e-9)
    assert scores.meta["strategy"] == "trak" and scores.meta["checkpoints"] == 1
    assert scores.meta["projection"] == projection


def test_dense_projection_preserves_inner_products():
    model = _model()
    data = make_dataset(n=6, shape=(2, 2, 1), num_classes=3)
    config = TrakConfig(projection_dim=4096, batch_size=3, projection="dense")
    phi, _ = trak_features(model, data, config, progress=False)
    g = _grads(model, data)
    np.testing.assert_allclose(phi @ phi.T, g @ g.T, atol=0.1 * np.abs(g @ g.T).max())
    regenerated, _ = trak_features(model, data, dataclasses.replace(config, materialize_bytes=0), progress=False)
    np.testing.assert_allclose(regenerated, phi, rtol=1e-10)  # the same projection, generated per batch


def test_ensemble_averages_checkpoints():
    models = [_model(0), _model(1)]
    train = make_dataset(n=30, shape=(2, 2, 1), num_classes=3)
    config = TrakConfig(projection_dim=15, batch_size=10, damping=1e-6)
    both = trak_scores(models, train, train.images[:2], train.labels[:2], config, progress=False)
    assert both.values.shape == (2, 30) and both.meta["checkpoints"] == 2
    one = trak_scores(models[0], train, train.images[:2], train.labels[:2], config, progress=False)
    assert not np.allclose(one.values, both.values)
    with pytest.raises(ValueError, match="at least one model"):
        trak_scores([], train, train.images[:1], train.labels[:1], config)
    with pytest.raises(ValueError, match="query images have shape"):
        trak_scores(models, train, np.zeros((1, 3, 3, 1)), np.zeros(1, int), config)


def test_kronecker_features_are_the_layerwise_projected_per_example_gradients_summed():
    model = to_functional(create_model("cnn", (8, 8, 1), 3, seed=0, width=2, hidden=5), mean=[0.5], std=[0.25])
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    model = model.replace(params=cast(model.params), state=cast(model.state))
    data = make_dataset(n=7, shape=(8, 8, 1), num_classes=3)
    config = TrakConfig(projection_dim=12, batch_size=4, seed=3)
    phi, one_minus_p = trak_features(model, data, config, progress=False)
    layers, _ = find_layers(model)
    projections = kronecker_projections(layers, 12, 3, jnp.float64)
    x = normalize(jnp.asarray(data.images), data.mean, data.std)
    log_odds = lambda logits, y: -margin_measurement(logits, y)
    network = lambda p, x: model.structure.apply(p, model.state, x)
    grads = per_example_grads(network, log_odds, model.params, x, jnp.asarray(data.labels))
    want = 0.0
    for layer in layers:
        pa, pg = projections[layer.name]
        g = layer_gradient(grads, layer)  # [N, in, out] from vmap(grad), bias row included
        want = want + jnp.einsum("ia,nio,ob->nab", pa, g, pg).reshape(len(data), -1)
    assert kronecker_dims(12) == (4, 3) and phi.shape == (7, 12)
    np.testing.assert_allclose(phi, want, rtol=1e-9, atol=1e-12)
    assert one_minus_p.shape == (7,) and np.all((one_minus_p > 0) & (one_minus_p < 1))
    with pytest.raises(ValueError, match="projection must be one of"):
        TrakConfig(projection="sparse")
