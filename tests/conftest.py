"""Shared fixtures: tiny generated datasets and an isolated data environment."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpoison.data import Dataset, Provenance

# Strict numerics for the whole suite: implicit rank promotion (adding a [C] array to a
# [N, H, W, C] one, say) raises instead of broadcasting silently; library code broadcasts
# explicitly, so a shape slip cannot pass for a feature.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """Point every data location at empty directories, so only what a test creates exists."""
    from jaxpoison.data import sources

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("JAXPOISON_DATA", str(empty))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "debian")
    return empty


def make_dataset(n=64, shape=(8, 8, 1), num_classes=4, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        images=rng.random((n, *shape), dtype=np.float32),
        labels=rng.integers(0, num_classes, n).astype(np.int32),
        class_names=tuple(str(c) for c in range(num_classes)),
        mean=np.full(shape[-1], 0.5, np.float32),
        std=np.full(shape[-1], 0.25, np.float32),
        provenance=Provenance("synthetic", "synthetic", "train"),
    )


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The ``digits-badnet-tiny`` preset up to fitted factors (shared by detection and pipeline tests)."""
    from types import SimpleNamespace

    from jaxpoison.experiments.pipeline import prepare
    from jaxpoison.experiments.presets import get_preset

    config = get_preset("digits-badnet-tiny")
    prepared = prepare(config, tmp_path_factory.mktemp("tiny_run"), progress=False)
    score_config = config.detection.scores
    return SimpleNamespace(**prepared._asdict(), prepared=prepared, score_config=score_config)
