"""Data beyond images: tabular features and token ids, and the image-only methods that refuse them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpoison.attacks import PoisonConfig, poison_dataset, square_patch
from jaxpoison.data import Dataset, DatasetError, Provenance
from jaxpoison.detection import DeltaConfig, activation_clustering, delta_influence, penultimate_features
from jaxpoison.detection.spectral import spectral_signatures
from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
from jaxpoison.models import MLP, from_apply, to_functional
from jaxpoison.training import adam_recipe, evaluate, train
from jaxpoison.unlearning import exact_unlearning


def tabular(n=96, d=6, seed=0) -> Dataset:
    """Three Gaussian blobs in 6-D, unnormalised (means around ±3, scale 2): a tabular dataset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    centres = rng.normal(0, 3, (3, d))
    x = centres[labels] + rng.normal(0, 2, (n, d))
    return Dataset(x.astype(np.float32), labels, ("a", "b", "c"), x.mean(0), x.std(0),
                   Provenance("synthetic", "blobs", "train"), kind="features")  # fmt: skip


def tokens(n=16, length=5, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 9, (n, length)), rng.integers(0, 2, n), ("neg", "pos"), None, None,
                   Provenance("synthetic", "tokens", "train"), kind="tokens")  # fmt: skip


def test_datasets_hold_features_and_tokens_with_their_own_checks():
    data, ids = tabular(), tokens()
    assert data.image_shape == (6,) and data.images.dtype == np.float32 and "features examples" in repr(data)
    assert ids.images.dtype == np.int32 and ids.mean.tolist() == [0.0] and ids.std.tolist() == [1.0]
    assert data.subset([0, 2]).kind == "features"  # the kind survives every derived dataset
    assert data.content_hash != data.replace(kind="image", images=np.zeros((96, 2, 3, 1), np.float32),
                                             mean=[0.0], std=[1.0]).content_hash  # fmt: skip
    with pytest.raises(DatasetError, match="kind must be one of"):
        data.replace(kind="audio")
    with pytest.raises(DatasetError, match="tokens must be integer ids"):
        ids.replace(images=ids.images.astype(np.float32))
    with pytest.raises(DatasetError, match="token ids must lie in"):
        ids.replace(images=-ids.images - 1)
    bad = data.images.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"NaN or inf .* examples \[3\]"):
        data.replace(images=bad)


@pytest.fixture(scope="module")
def tabular_run():
    data = tabular()
    model = to_functional(MLP(6, 3, hidden=(16,), rngs=nnx.Rngs(0)), data.mean, data.std)
    result = train(model, data, adam_recipe(epochs=20, batch_size=16, learning_rate=1e-2), progress=False)
    return data, result.model


def test_a_tabular_model_trains_and_its_influence_runs(tabular_run):
    data, model = tabular_run
    assert evaluate(model, data).accuracy > 0.8  # the blobs are separable enough to learn
    factors = fit_factors(model, data, FactorConfig(batch_size=32), progress=False)
    scores = pairwise_scores(model, data, data.images[:2], data.labels[:2], factors, ScoreConfig(batch_size=32),
                             progress=False)  # fmt: skip
    assert scores.values.shape == (2, 96) and np.all(np.isfinite(scores.values))
    # A training point is among the most influential for itself.
    assert scores.values[0].argmax() in np.argsort(-scores.values[0])[:5] and scores.values[0, 0] > 0


def test_label_only_delta_influence_and_eu_run_on_tabular_data(tabular_run):
    data, model = tabular_run
    factors = fit_factors(model, data, FactorConfig(batch_size=32), progress=False)
    point = data.images[0]
    target = int(np.argmax(model(jnp.asarray(point[None]))))
    config = DeltaConfig(n_b=4, n_tol=1, modify="label", seed=0)
    result = delta_influence(model, data, point, target, factors, config, ScoreConfig(batch_size=32),
                             progress=False)  # fmt: skip
    assert result.delta.shape == (1, 4, 96) and result.flagged.ndim == 1  # [test points, n_b, N]
    with pytest.raises(DatasetError, match=r"image transformations .* needs image data"):
        delta_influence(model, data, point, target, factors, config.replace(modify="both"), progress=False)
    fresh = to_functional(MLP(6, 3, hidden=(16,), rngs=nnx.Rngs(1)), data.mean, data.std)
    unlearned = exact_unlearning(fresh, data, np.array([1, 2, 3]), adam_recipe(epochs=2, batch_size=16),
                                 progress=False)  # fmt: skip
    assert unlearned.info["forgotten"] == 3 and 0.0 <= evaluate(unlearned.model, data).accuracy <= 1.0


def test_feature_detectors_run_on_tabular_data(tabular_run):
    data, model = tabular_run
    features = penultimate_features(model, data, progress=False)
    assert features.shape == (96, 16)
    assert spectral_signatures(features, data.labels, 0.05).flagged.ndim == 1
    assert activation_clustering(features, data.labels).flagged.ndim == 1


def token_model():
    rng = np.random.default_rng(0)
    params = {"embed": jnp.asarray(rng.normal(size=(9, 4)), jnp.float32),
              "head": {"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32), "b": jnp.zeros(2)}}  # fmt: skip
    return from_apply(lambda p, t: p["embed"][t].mean(1) @ p["head"]["w"] + p["head"]["b"][None], params, (5,),
                      dense={"head/w": "head/b"}, input_dtype="int32")  # fmt: skip


def test_token_influence_takes_integer_queries_and_refuses_float_ones():
    data, model = tokens(), token_model()
    scores = pairwise_scores(model, data, data.images[:2], data.labels[:2], None, ScoreConfig(batch_size=8,
                             on_untracked="ignore"), progress=False)  # fmt: skip
    assert scores.values.shape == (2, 16) and np.all(np.isfinite(scores.values))
    with pytest.raises(ValueError, match="integer token ids"):
        pairwise_scores(model, data, data.images[:2].astype(np.float32), data.labels[:2], None,
                        ScoreConfig(on_untracked="ignore"), progress=False)  # fmt: skip


@pytest.mark.parametrize("method", ["trigger", "transforms", "augmentation", "freqdef", "brew"])
def test_image_only_methods_refuse_token_data_clearly(method):
    from jaxpoison.attacks import brew_poisons
    from jaxpoison.detection import train_freqdef

    data, model = tokens(), token_model()
    calls = {
        "trigger": lambda: poison_dataset(data, square_patch((8, 8, 1), 2, (1.0,)), PoisonConfig(target=0, rate=0.1)),
        "transforms": lambda: delta_influence(model, data, data.images[0], 0, None, DeltaConfig(modify="image"),
                                              progress=False),
        "augmentation": lambda: train(model, data, adam_recipe(epochs=1, batch_size=8).replace(flip=True),
                                      progress=False),
        "freqdef": lambda: train_freqdef(data, progress=False),
        "brew": lambda: brew_poisons(model, data, np.array([0]), data.images[1], 1, progress=False),
    }  # fmt: skip
    with pytest.raises(DatasetError, match=r"needs image data .* holds tokens"):
        calls[method]()
