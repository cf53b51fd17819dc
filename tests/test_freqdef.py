"""FreqDef: the DCT, the synthetic triggers, the FreqCNN and the detector end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from flax import nnx
from sklearn.metrics import roc_auc_score

from jaxpoison.detection.freqdef import (
    FAMILIES,
    FreqDefConfig,
    apply_family,
    dct2,
    freqdef_detect,
    freqdef_scores,
    idct2,
    synthetic_triggers,
    train_freqdef,
)
from jaxpoison.models import FreqCNN, count_params, create_model, to_functional
from tests.conftest import make_dataset


def smooth_dataset(n: int, seed: int):
    """Natural-image-like (low-frequency) 8×8 grey images: bilinearly upsampled 3×3 random grids."""
    grid = np.random.default_rng(seed).random((n, 3, 3), dtype=np.float32)
    up = np.maximum(0.0, 1.0 - np.abs(np.linspace(0, 2, 8)[:, None] - np.arange(3)[None, :])).astype(np.float32)
    images = np.einsum("hi,nij,wj->nhw", up, grid, up)[..., None]
    return make_dataset(n, seed=seed).replace(images=np.clip(0.15 + 0.6 * images, 0.0, 1.0))


@pytest.fixture(scope="module")
def detector():
    # Adadelta at lr 1.0 (its original default) instead of the reference 0.05: 36 steps at
    # 0.05 move the weights too little for a test to see learning.
    config = FreqDefConfig(width=4, epochs=3, batch_size=16, learning_rate=1.0, seed=0)
    return train_freqdef(smooth_dataset(64, seed=0), config, progress=False)


def test_dct2_matches_scipy_and_idct2_inverts_it():
    x = np.random.default_rng(0).random((3, 8, 6, 2), dtype=np.float32)  # non-square: H and W not mixed up
    y = np.asarray(dct2(x))
    expected = np.stack([scipy.fft.dctn(xi, type=2, norm="ortho", axes=(0, 1)) for xi in x])
    np.testing.assert_allclose(y, expected, atol=2e-6)
    np.testing.assert_allclose(np.asarray(dct2(x[0])), expected[0], atol=2e-6)  # a single [H, W, C] image
    np.testing.assert_allclose(np.asarray(idct2(y)), x, atol=2e-6)
    # Orthonormal: the energy is preserved, and a constant image has only a DC term.
    np.testing.assert_allclose(np.sum(y**2), np.sum(x**2), rtol=1e-5)
    flat = np.asarray(dct2(np.full((1, 8, 6, 1), 0.5, np.float32)))
    assert flat[0, 0, 0, 0] == pytest.approx(0.5 * np.sqrt(48), rel=1e-6)
    assert np.abs(flat).sum() == pytest.approx(abs(flat[0, 0, 0, 0]), rel=1e-5)


def test_synthetic_triggers_shape_range_determinism_and_family_coverage():
    images = jnp.asarray(np.random.default_rng(1).uniform(0.1, 0.9, (64, 8, 8, 1)).astype(np.float32))
    out, families = synthetic_triggers(jax.random.key(0), images, images, return_families=True)
    out, families = np.asarray(out), np.asarray(families)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, np.asarray(synthetic_triggers(jax.random.key(0), images, images)))
    assert not np.array_equal(out, np.asarray(synthetic_triggers(jax.random.key(1), images, images)))
    counts = np.bincount(families, minlength=len(FAMILIES))
    assert counts.size == 5 and counts.min() >= 6  # uniform over 5 families: ~13 each
    changed = np.abs(out - np.asarray(images)).reshape(64, -1).max(axis=1) > 0
    assert changed.all()  # every family alters every image


def _rectangle(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, height, left, width)`` of a boolean [H, W] mask, asserting it is one full rectangle."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert rows.size and cols.size
    top, left = rows[0], cols[0]
    height, width = rows[-1] - top + 1, cols[-1] - left + 1
    expected = np.zeros_like(mask)
    expected[top : top + height, left : left + width] = True
    np.testing.assert_array_equal(mask, expected)
    return int(top), int(height), int(left), int(width)


def _margins(top, height, side):
    return top, side - top - height


def test_each_family_changes_the_image_as_specified():
    many = jax.jit(jax.vmap(apply_family, in_axes=(None, 0, None, None)))
    keys = jax.random.split(jax.random.key(3), 40)
    rng = np.random.default_rng(2)
    image = rng.uniform(0.1, 0.9, (32, 32, 3)).astype(np.float32)
    other = rng.uniform(0.0, 1.0, (32, 32, 3)).astype(np.float32)
    outs = {f: np.asarray(many(f, keys, image, other)) for f in range(len(FAMILIES))}
    for f, out in outs.items():
        assert out.min() >= 0.0 and out.max() <= 1.0, FAMILIES[f]
        assert (np.abs(out - image).reshape(40, -1).max(axis=1) > 0).all(), FAMILIES[f]

    # White block: a rectangle of sides 2..7 set exactly to 1 in every channel, at a corner, margin 0..5.
    sides = set()
    for out in outs[0]:
        mask = np.all(out == 1.0, axis=-1)
        assert np.array_equal(np.any(out != image, axis=-1), mask)
        top, height, left, width = _rectangle(mask)
        assert 2 <= height <= 7 and 2 <= width <= 7
        margin_rows, margin_cols = min(_margins(top, height, 32)), min(_margins(left, width, 32))
        assert margin_rows == margin_cols <= 5  # one margin for both axes, as in the reference
        sides.add((height, width))
    assert len(sides) > 5  # sizes vary (and height and width independently)

    # Noise block: only a corner rectangle changes.
    for out in outs[1]:
        _, height, _, width = _rectangle(np.any(out != image, axis=-1))
        assert 2 <= height <= 7 and 2 <= width <= 7

    # Gaussian noise: mean shift 25/255, per-pixel std between sqrt(10)/255 and sqrt(70)/255.
    diff = outs[2] - image
    assert np.mean(diff) == pytest.approx(25 / 255, abs=2e-3)
    stds = diff.reshape(40, -1).std(axis=1)
    assert stds.min() > 0.9 * np.sqrt(10) / 255 and stds.max() < 1.1 * np.sqrt(70) / 255

    # Shadow: a proper part of the image darkened by one factor in [0.3, 0.7].
    for out in outs[3]:
        dark = out != image
        assert 0 < dark.mean() < 1
        ratio = out[dark] / image[dark]
        assert 0.3 - 1e-6 <= ratio.min() and ratio.max() <= 0.7 + 1e-6
        assert np.ptp(ratio) < 1e-5

    # Blend: x + 0.3·other, clipped at 1.
    np.testing.assert_allclose(outs[4], np.broadcast_to(np.minimum(image + 0.3 * other, 1.0), outs[4].shape), atol=1e-6)


def test_block_triggers_scale_with_small_images():
    many = jax.jit(jax.vmap(apply_family, in_axes=(None, 0, None, None)))
    image = np.full((8, 8, 1), 0.5, np.float32)
    for out in np.asarray(many(0, jax.random.split(jax.random.key(4), 60), image, image)):
        top, height, left, width = _rectangle(out[..., 0] == 1.0)
        # Sides 2..7 and margins 0..5 at 32 px become 1..2 and 0..1 at 8 px.
        assert 1 <= height <= 2 and 1 <= width <= 2
        assert min(_margins(top, height, 8)) <= 1 and min(_margins(left, width, 8)) <= 1


def test_freq_cnn_registered_with_reference_size_and_pads_odd_sizes():
    # Abstract models (nnx.eval_shape): shapes and counts without compiling any initialiser.
    reference = nnx.eval_shape(lambda: create_model("freq_cnn", (32, 32, 3), 2))
    assert isinstance(reference, FreqCNN)
    assert count_params(nnx.state(reference, nnx.Param)) == 292_002
    m = to_functional(nnx.eval_shape(lambda: create_model("freq_cnn", (28, 28, 1), 2, width=4)))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)  # zero-padded to 32×32 inside
    assert jax.eval_shape(lambda m, x: m(x), m, x).shape == (2, 2)
    assert jax.eval_shape(lambda m, x: m.features(x), m, x).shape == (2, 4 * 4 * 16)
    assert jax.eval_shape(lambda m, x: m.train_logits(x), m, x)[0].shape == (2, 2)


def test_detector_learns_clean_versus_triggered(detector):
    assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves((detector.model.params, detector.model.state)))
    history = detector.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_accuracy"] >= 0.7  # chance is 0.5
    assert detector.image_shape == (8, 8, 1) and detector.num_clean == 64
    assert detector.dct_mean.shape == detector.dct_std.shape == (8, 8, 1) and (detector.dct_std > 0).all()
    # Held-out images: their synthetic triggered copies score higher than the clean ones.
    clean = smooth_dataset(64, seed=11).images
    triggered = np.asarray(synthetic_triggers(jax.random.key(11), clean, clean))
    scores = freqdef_scores(detector, np.concatenate([clean, triggered]), batch_size=16)
    assert roc_auc_score(np.r_[np.zeros(64), np.ones(64)], scores) > 0.75


def test_scores_and_detection(detector):
    data = smooth_dataset(37, seed=5)
    scores = freqdef_scores(detector, data.images, batch_size=16)  # 3 batches, the last one padded
    assert scores.shape == (37,) and scores.dtype == np.float32
    assert (scores >= 0).all() and (scores <= 1).all()
    assert np.ptp(scores) > 0
    # Inference mode: a score depends on its image only, not on the batch or the padding around it.
    np.testing.assert_allclose(freqdef_scores(detector, data.images[21:], batch_size=16)[11:], scores[32:], atol=1e-6)
    flagged, scores2 = freqdef_detect(detector, data, batch_size=16)
    np.testing.assert_array_equal(scores2, scores)
    assert flagged.dtype == np.int64
    np.testing.assert_array_equal(flagged, np.flatnonzero(scores >= 0.5))
    everything = detector._replace(config=detector.config.replace(threshold=0.0))
    np.testing.assert_array_equal(freqdef_detect(everything, data, batch_size=16)[0], np.arange(37))


def test_uint8_input_takes_the_dct_of_rounded_255_x(detector):
    # On images that are exact multiples of 1/255, DCT(round(255·x)) = 255·DCT(x): a uint8
    # detector with 255× the standardisation statistics must give the same scores.
    images = np.round(smooth_dataset(16, seed=6).images * 255) / 255
    uint8 = detector._replace(
        config=detector.config.replace(uint8_input=True),
        dct_mean=255 * detector.dct_mean,
        dct_std=255 * detector.dct_std,
    )
    np.testing.assert_allclose(freqdef_scores(uint8, images), freqdef_scores(detector, images), atol=1e-4)


def test_bad_inputs_raise(detector):
    with pytest.raises(ValueError, match=r"trained on images of shape \(8, 8, 1\)"):
        freqdef_scores(detector, np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        freqdef_scores(detector, np.zeros((0, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        freqdef_scores(detector, np.full((2, 8, 8, 1), 2.0, np.float32))
    with pytest.raises(ValueError, match="4-D"):
        freqdef_scores(detector, np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="empty"):
        train_freqdef(
            make_dataset(4).subset(np.zeros(0, np.int64)),
            FreqDefConfig(width=2, epochs=1, batch_size=2),
            progress=False,
        )
    with pytest.raises(ValueError, match=r"lower FreqDefConfig\.batch_size"):
        train_freqdef(make_dataset(4), FreqDefConfig(width=2, epochs=1, batch_size=9), progress=False)


@pytest.mark.parametrize(
    "field,value",
    [("width", 0), ("epochs", 0), ("batch_size", -1), ("batch_size", 2.5), ("learning_rate", 0.0),
     ("learning_rate", float("nan")), ("weight_decay", -1e-4), ("max_train", 0), ("threshold", 1.5),
     ("seed", "0"), ("uint8_input", "yes")],
)  # fmt: skip
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=rf"FreqDefConfig\.{field}\b"):
        FreqDefConfig(**{field: value})
    FreqDefConfig(max_train=10, threshold=1.0, weight_decay=0.0)  # valid edge values pass
