"""TRAK: exact formula when the projection is invertible, JL behaviour, ensembles, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.influence import (
    TrakConfig,
    flatten_batch,
    margin_measurement,
    per_example_grads,
    trak_features,
    trak_scores,
)
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
    x = (jnp.asarray(data.images) - data.mean) / data.std
    log_odds = lambda logits, y: -margin_measurement(logits, y)
    network = lambda p, x: model.structure.apply(p, model.state, x)  # the raw network, on normalised x
    grads = per_example_grads(network, log_odds, model.params, x, jnp.asarray(data.labels))
    return np.asarray(flatten_batch(grads))


def test_square_projection_gives_the_exact_trak_formula():
    model = _model()
    train = make_dataset(n=40, shape=(2, 2, 1), num_classes=3)
    queries = make_dataset(n=3, shape=(2, 2, 1), num_classes=3, seed=5)
    d = 15  # 4·3 kernel + 3 bias: a square Gaussian projection is invertible, so TRAK is exact
    scores = trak_scores(model, train, queries.images, queries.labels, TrakConfig(projection_dim=d, batch_size=8),
                         progress=False)  # fmt: skip
    g, gq = _grads(model, train), _grads(model, queries)
    x = (jnp.asarray(train.images) - train.mean) / train.std
    p = np.asarray(jax.nn.softmax(model.structure.apply(model.params, model.state, x)))[np.arange(40), train.labels]
    want = gq @ np.linalg.solve(g.T @ g, g.T) * (1 - p)[None]
    np.testing.assert_allclose(scores.values, want, rtol=1e-6, atol=1e-9)
    assert scores.meta["strategy"] == "trak" and scores.meta["checkpoints"] == 1


def test_projection_preserves_inner_products():
    model = _model()
    data = make_dataset(n=6, shape=(2, 2, 1), num_classes=3)
    phi, _ = trak_features(model, data, TrakConfig(projection_dim=4096, batch_size=3), progress=False)
    g = _grads(model, data)
    np.testing.assert_allclose(phi @ phi.T, g @ g.T, atol=0.1 * np.abs(g @ g.T).max())
    regenerated, _ = trak_features(model, data, TrakConfig(projection_dim=4096, batch_size=3, materialize_bytes=0),
                                   progress=False)  # fmt: skip
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
