"""The docstrings' examples run as written (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "jaxpoison.detection.delta_influence",
    "jaxpoison.experiments.stats",
    "jaxpoison.influence.hvp",
    "jaxpoison.progress",
    "jaxpoison.selection.ifs",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
