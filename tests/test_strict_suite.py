"""The suite itself is strict: warnings fail tests, and implicit rank promotion raises."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import pytest


def test_an_unexpected_warning_fails_the_test():
    with pytest.raises(UserWarning, match="unexpected"):
        warnings.warn("unexpected", UserWarning, stacklevel=1)
    with pytest.raises(DeprecationWarning):
        warnings.warn("old API", DeprecationWarning, stacklevel=1)


def test_implicit_rank_promotion_raises():
    with pytest.raises(ValueError, match=r"jax_numpy_rank_promotion=.raise."):
        jnp.ones((2, 3)) + jnp.ones(3)
