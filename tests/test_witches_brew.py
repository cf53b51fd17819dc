"""Witches' Brew: the matching loss falls, budgets hold, labels stay clean."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpoison.attacks import BrewConfig, apply_brew, brew_poisons
from jaxpoison.data import load_splits
from jaxpoison.models import create_model, to_functional
from jaxpoison.training import adam_recipe, train


def test_brew_decreases_matching_loss_within_budget():
    train_set, test_set = load_splits("digits")
    model = to_functional(create_model("cnn", train_set.image_shape, 10, seed=0, width=8, hidden=32))
    trained = train(model, train_set, adam_recipe(epochs=3, batch_size=32), progress=False)
    model = model._replace(params=trained.params, state=trained.state)
    intended = 1
    poisons = np.flatnonzero(train_set.labels == intended)[:24]
    target = test_set.images[np.flatnonzero(test_set.labels == 7)[0]]
    # Without augmentation the objective is deterministic, so progress is measurable in few steps.
    config = BrewConfig(epsilon=8 / 255, steps=25, restarts=2, batch_size=16, augment=False, seed=0)
    brew = brew_poisons(model, train_set, poisons, target, intended, config, progress=False)
    assert brew.losses.shape == (2, 25)
    for losses in brew.losses:
        assert losses[-1] < losses[0] - 0.02  # gradient matching makes progress
    assert brew.best_restart == int(np.argmin(brew.losses[:, -1]))
    assert np.abs(brew.perturbations).max() <= config.epsilon + 1e-6
    poisoned = apply_brew(train_set, poisons, brew)
    np.testing.assert_array_equal(poisoned.labels, train_set.labels)  # clean-label
    assert poisoned.images.min() >= 0.0 and poisoned.images.max() <= 1.0
    others = np.setdiff1d(np.arange(len(train_set)), poisons)
    np.testing.assert_array_equal(poisoned.images[others], train_set.images[others])
    assert np.abs(poisoned.images[poisons] - train_set.images[poisons]).max() > 0


def test_brew_errors():
    with pytest.raises(ValueError, match="epsilon"):
        BrewConfig(epsilon=0.0)
