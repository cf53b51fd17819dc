"""Factors and scores survive a round trip to disk; an interrupted factor fit resumes."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from jaxpoison.influence import (
    FactorConfig,
    FactorError,
    fit_factors,
    load_factors,
    load_scores,
    pairwise_scores,
    save_factors,
    save_scores,
)
from jaxpoison.influence import kfac as kfac_module
from jaxpoison.models import create_model, to_functional
from tests.conftest import make_dataset


@pytest.fixture(scope="module")
def setup():
    data = make_dataset(n=20)
    model = to_functional(create_model("cnn", data.image_shape, data.num_classes, width=2, hidden=8))
    return model, data


def _assert_same_blocks(a, b):
    assert a.blocks.keys() == b.blocks.keys()
    for name in a.blocks:
        for key in a.blocks[name]:
            np.testing.assert_array_equal(np.asarray(a.blocks[name][key]), np.asarray(b.blocks[name][key]))


def test_factors_round_trip(tmp_path, setup):
    model, data = setup
    factors = fit_factors(model, data, FactorConfig(batch_size=8), progress=False)
    save_factors(tmp_path / "f", factors)
    loaded = load_factors(tmp_path / "f", model)
    _assert_same_blocks(factors, loaded)
    assert loaded.meta == factors.meta and [layer.name for layer in loaded.layers] == factors.meta["layers"]
    other = to_functional(create_model("cnn", data.image_shape, data.num_classes, seed=3, width=2, hidden=8))
    with pytest.raises(FactorError, match="other parameters"):
        load_factors(tmp_path / "f", other)
    with pytest.raises(FactorError, match=r"factors\.json missing"):
        load_factors(tmp_path / "nothing", model)


def test_scores_round_trip(tmp_path, setup):
    model, data = setup
    scores = pairwise_scores(model, data, data.images[:3], data.labels[:3], None, progress=False)
    save_scores(tmp_path / "s", scores)
    loaded = load_scores(tmp_path / "s")
    np.testing.assert_array_equal(loaded.values, scores.values)
    assert loaded.meta == scores.meta and loaded.meta["strategy"] == "identity"


def test_saved_scores_are_verified_on_load(tmp_path, setup):
    from jaxpoison.errors import ArtifactError

    model, data = setup
    first = pairwise_scores(model, data, data.images[:3], data.labels[:3], None, progress=False)
    other = pairwise_scores(model, data, data.images[3:6], data.labels[3:6], None, progress=False)
    save_scores(tmp_path / "a", first)
    save_scores(tmp_path / "b", other)
    shutil.rmtree(tmp_path / "a" / "values")
    shutil.copytree(tmp_path / "b" / "values", tmp_path / "a" / "values")  # another run's values, same shape
    with pytest.raises(ArtifactError, match=r"not the ones scores\.json records"):
        load_scores(tmp_path / "a")
    (tmp_path / "b" / "scores.json").write_text("{")
    with pytest.raises(ArtifactError, match="is unreadable"):
        load_scores(tmp_path / "b")
    with pytest.raises(ArtifactError, match=r"scores\.json missing"):
        load_scores(tmp_path / "nothing")


class _Interrupt(Exception):
    pass


def test_interrupted_factor_fit_resumes(tmp_path, setup, monkeypatch):
    model, data = setup
    config = FactorConfig(strategy="ekfac", fisher="true", batch_size=4, seed=2)  # 5 batches per pass
    reference = fit_factors(model, data, config, progress=False)

    original = kfac_module._lambda_step
    calls = {"lambda": 0, "covariance": 0}

    def failing_lambda_step(*args, **kwargs):
        calls["lambda"] += 1
        if calls["lambda"] == 4:
            raise _Interrupt  # the Lambda pass dies after 3 of its 5 batches
        return original(*args, **kwargs)

    monkeypatch.setattr(kfac_module, "_lambda_step", failing_lambda_step)
    with pytest.raises(_Interrupt):
        fit_factors(model, data, config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)

    covariance = kfac_module._covariance_step

    def counting_covariance_step(*args, **kwargs):
        calls["covariance"] += 1
        return covariance(*args, **kwargs)

    calls["lambda"] = 100  # no more failures
    monkeypatch.setattr(kfac_module, "_covariance_step", counting_covariance_step)
    resumed = fit_factors(model, data, config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert calls["covariance"] == 0  # the finished covariance pass was not redone
    assert calls["lambda"] == 100 + 2  # only the 2 missing Lambda batches ran
    _assert_same_blocks(reference, resumed)
    jax.block_until_ready(resumed.blocks)
