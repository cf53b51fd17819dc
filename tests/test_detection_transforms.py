"""Δ-Influence query transformations: exact special cases, keyed determinism, batching, label flips."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.detection.transforms import (
    DEFAULT_PARAMS,
    TRANSFORM_NAMES,
    TransformParams,
    apply_transform,
    flip_labels,
    gaussian_blur,
    gaussian_kernel,
    transform_batch,
)

RANDOM = ("color_jitter", "random_affine", "elastic", "blur", "rotation")
DETERMINISTIC = ("flip", "invert", "color_switch")
# Factors that make each transformation the identity.
NO_JITTER = dict(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0))
NO_AFFINE = dict(degrees=(0, 0), scale=(1, 1), shear=(0, 0))


def _image(channels=3, size=8, seed=0):
    return jax.random.uniform(jax.random.key(seed), (size, size, channels))


def _params(**changes) -> TransformParams:
    return dataclasses.replace(DEFAULT_PARAMS, **changes)


def _apply(name, image, params=DEFAULT_PARAMS, seed=0):
    return np.asarray(apply_transform(name, jax.random.key(seed), image, params))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_shape_range_and_determinism(name, channels):
    image = _image(channels)
    out = _apply(name, image, seed=1)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6  # interpolation sums weights only up to rounding
    np.testing.assert_array_equal(out, _apply(name, image, seed=1))
    if name in RANDOM:
        assert not np.array_equal(out, _apply(name, image, seed=2))
    else:
        np.testing.assert_array_equal(out, _apply(name, image, seed=2))


def test_flip_color_switch_invert_exact():
    image = jnp.asarray(np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 20)
    np.testing.assert_array_equal(_apply("flip", image), np.asarray(image)[:, ::-1])
    np.testing.assert_array_equal(_apply("flip", _apply("flip", image)), image)
    switched = _apply("color_switch", image)
    np.testing.assert_array_equal(switched, np.asarray(image)[..., [1, 0, 2]])
    np.testing.assert_array_equal(_apply("color_switch", switched), image)
    np.testing.assert_array_equal(_apply("color_switch", image[..., :1]), image[..., :1])
    hand = jnp.array([[[0.0], [0.25]], [[0.5], [1.0]]])
    np.testing.assert_array_equal(_apply("invert", hand), [[[1.0], [0.75]], [[0.5], [0.0]]])


def test_gaussian_kernel():
    kernel = np.asarray(gaussian_kernel(5, 2.0, taps=9))
    assert kernel.shape == (9,)
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(kernel[[0, 1, 7, 8]], 0.0)
    np.testing.assert_allclose(kernel, kernel[::-1])
    np.testing.assert_allclose(kernel[3:6] / kernel[4], np.exp(-np.array([1, 0, 1]) / 8), rtol=1e-6)
    for size in (4, 11):
        with pytest.raises(ValueError, match="size"):
            gaussian_kernel(size, 1.0, taps=9)


def _numpy_blur(image, size, sigma):
    """Direct 2-D correlation with the outer product kernel on a reflect-padded image."""
    image = np.asarray(image, np.float64)
    r = size // 2
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for a in range(size):
        for b in range(size):
            out += kernel[a, b] * padded[a : a + h, b : b + w]
    return out


def test_blur_matches_numpy_reference_and_keeps_constants():
    image = _image(3)
    np.testing.assert_allclose(gaussian_blur(image, 5, 1.5, taps=9), _numpy_blur(image, 5, 1.5), atol=1e-6)
    np.testing.assert_allclose(gaussian_blur(image, 5, 1.5), _numpy_blur(image, 5, 1.5), atol=1e-6)
    np.testing.assert_allclose(gaussian_blur(image, (3, 7), 2.0), _numpy_blur_2d(image, 3, 7, 2.0), atol=1e-6)
    np.testing.assert_allclose(_apply("blur", jnp.full((8, 8, 3), 0.3)), 0.3, atol=1e-6)


def test_random_affine_special_cases():
    image = _image(1)
    np.testing.assert_array_equal(_apply("random_affine", image, _params(**NO_AFFINE)), image)
    # A rotation about the centre; +90° is clockwise, as in torchvision's affine.
    quarter = _params(**{**NO_AFFINE, "degrees": (90, 90)})
    np.testing.assert_array_equal(_apply("random_affine", image, quarter), np.rot90(image, -1))
    # Scale 2 reads input pixel round(c + (i - c) / 2) for output pixel i, c = 3.5 (no ties here).
    zoom = _params(**{**NO_AFFINE, "scale": (2, 2)})
    index = np.rint(3.5 + (np.arange(8) - 3.5) / 2).astype(int)
    np.testing.assert_array_equal(_apply("random_affine", image, zoom), np.asarray(image)[index][:, index])
    # x-shear of 45°: output (r, c) reads input (r, c + (r - 3)) about the centre of a 7×7 image, zero outside.
    small = np.asarray(_image(1, size=7))
    expected = np.zeros((7, 7, 1), np.float32)
    for r in range(7):
        for c in range(7):
            if 0 <= c + r - 3 < 7:
                expected[r, c] = small[r, c + r - 3]
    sheared = _apply("random_affine", jnp.asarray(small), _params(**{**NO_AFFINE, "shear": (45, 45)}))
    np.testing.assert_array_equal(sheared, expected)


def test_elastic_without_displacement_is_identity():
    image = _image(3)
    np.testing.assert_array_equal(_apply("elastic", image, _params(elastic_alpha=0.0)), image)
    moved = _apply("elastic", image)
    assert np.abs(moved - np.asarray(image)).mean() > 0.05  # the default field really moves pixels


def test_color_jitter_factors():
    image = _image(3)
    np.testing.assert_allclose(_apply("color_jitter", image, _params(**NO_JITTER)), image, atol=1e-6)
    gray = np.asarray(image) @ np.array([0.299, 0.587, 0.114], np.float32)
    desaturated = _apply("color_jitter", image, _params(**{**NO_JITTER, "saturation": (0, 0)}))
    np.testing.assert_allclose(desaturated, np.repeat(gray[..., None], 3, -1), atol=1e-6)
    # Brightness 1.5 clamps, then a third of a turn of hue maps red -> green -> blue -> red; grey stays grey.
    pure = jnp.array([[[1.0, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.4, 0.4, 0.4]]])
    shifted = _apply("color_jitter", pure, _params(**{**NO_JITTER, "brightness": (1.5, 1.5), "hue": (1 / 3, 1 / 3)}))
    np.testing.assert_allclose(shifted, [[[0, 1, 0], [0, 0, 0.75], [0.75, 0, 0], [0.6, 0.6, 0.6]]], atol=1e-5)
    # Grayscale: zero contrast collapses to the image mean.
    flat = _apply("color_jitter", image[..., :1], _params(**{**NO_JITTER, "contrast": (0, 0)}))
    np.testing.assert_allclose(flat, np.full((8, 8, 1), np.mean(image[..., :1])), atol=1e-6)


def test_transform_batch_rows_match_apply_transform():
    image = _image(3)
    key = jax.random.key(7)
    images, choice = transform_batch(key, image, TRANSFORM_NAMES, 50)
    assert images.shape == (50, 8, 8, 3) and images.dtype == jnp.float32 and choice.dtype == jnp.int32
    assert choice.min() >= 0 and choice.max() < len(TRANSFORM_NAMES)
    assert len(set(np.asarray(choice).tolist())) >= 5
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # The key derivation documented in transform_batch.
    choice_key, query_key = jax.random.split(key)
    np.testing.assert_array_equal(choice, jax.random.randint(choice_key, (50,), 0, len(TRANSFORM_NAMES)))
    keys = jax.random.split(query_key, 50)
    rows = np.asarray(images)  # indexing the jax array row by row would dominate the test time
    for i, c in enumerate(np.asarray(choice)):
        name = TRANSFORM_NAMES[c]
        np.testing.assert_allclose(rows[i], apply_transform(name, keys[i], image), atol=1e-5, err_msg=name)
    again, _ = transform_batch(key, image, TRANSFORM_NAMES, 50)
    np.testing.assert_array_equal(images, again)
    other, _ = transform_batch(jax.random.key(8), image, TRANSFORM_NAMES, 50)
    assert not np.array_equal(images, other)


def test_transform_batch_subset_and_normalized_space():
    image = _image(3)
    names = ("flip", "invert")
    flipped, inverted = np.asarray(image)[:, ::-1], 1 - np.asarray(image)
    images, choice = transform_batch(jax.random.key(0), image, names, 10)
    assert set(np.asarray(choice).tolist()) == {0, 1}
    for out, c in zip(np.asarray(images), np.asarray(choice), strict=True):
        np.testing.assert_array_equal(out, flipped if c == 0 else inverted)
    # Mean 0 / std 1 makes the normalised space the pixel space.
    unit, _ = transform_batch(jax.random.key(0), image, names, 10, space="normalized", mean=[0.0] * 3, std=[1.0] * 3)
    np.testing.assert_array_equal(unit, images)
    # Otherwise invert reflects about 0.5 in normalised units: (1 - (x - m) / s) s + m = s - x + 2m.
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.25, 0.2, 0.5], np.float32)
    images, choice = transform_batch(jax.random.key(0), image, names, 10, space="normalized", mean=mean, std=std)
    for out, c in zip(np.asarray(images), np.asarray(choice), strict=True):
        np.testing.assert_allclose(out, flipped if c == 0 else std - np.asarray(image) + 2 * mean, atol=1e-6)
    # ... and color_jitter clamps to [0, 1] in normalised units: the reference's quirk.
    jitter, _ = transform_batch(
        jax.random.key(0), image, ("color_jitter",), 2, _params(**NO_JITTER), space="normalized", mean=0.5, std=0.25
    )
    np.testing.assert_allclose(jitter[0], np.clip((np.asarray(image) - 0.5) / 0.25, 0, 1) * 0.25 + 0.5, atol=1e-6)


def test_input_validation():
    image = _image(3)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="valid names"):
        apply_transform("rotate", key, image)
    with pytest.raises(ValueError, match="valid names"):
        transform_batch(key, image, ("flip", "sharpen"), 4)
    with pytest.raises(ValueError, match="empty"):
        transform_batch(key, image, (), 4)
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        apply_transform("flip", key, image[..., 0])
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        transform_batch(key, jnp.zeros((8, 8, 2)), ("flip",), 4)
    with pytest.raises(ValueError, match="float"):
        apply_transform("flip", key, jnp.zeros((8, 8, 3), jnp.uint8))
    with pytest.raises(ValueError, match="space"):
        transform_batch(key, image, ("flip",), 4, space="lab")
    with pytest.raises(ValueError, match="mean and std"):
        transform_batch(key, image, ("flip",), 4, space="normalized")
    with pytest.raises(ValueError, match="shape"):
        transform_batch(key, image, ("flip",), 4, space="normalized", mean=[0.5, 0.5], std=1.0)
    with pytest.raises(ValueError, match="n must"):
        transform_batch(key, image, ("flip",), 0)
    with pytest.raises(ValueError, match="low <= high"):
        TransformParams(scale=(2, 1))
    with pytest.raises(ValueError, match="odd"):
        TransformParams(blur_kernel_size=(4, 9))
    assert TransformParams(hue=[-0.1, 0.1]) == DEFAULT_PARAMS  # lists normalise, so params stay hashable


def test_flip_labels():
    labels = np.asarray(flip_labels(jax.random.key(0), 2000, 10, 3))
    assert labels.shape == (2000,) and labels.dtype == np.int32
    assert 3 not in labels
    assert set(labels.tolist()) == set(range(10)) - {3}
    all_others = np.asarray(flip_labels(jax.random.key(1), 9, 10, 0, distinct=True))
    np.testing.assert_array_equal(np.sort(all_others), np.arange(1, 10))
    some = np.asarray(flip_labels(jax.random.key(2), 5, 10, 9, distinct=True))
    assert len(set(some.tolist())) == 5 and 9 not in some and some.max() < 10
    np.testing.assert_array_equal(some, flip_labels(jax.random.key(2), 5, 10, 9, distinct=True))
    with pytest.raises(ValueError, match="lower n"):
        flip_labels(jax.random.key(0), 10, 10, 3, distinct=True)
    with pytest.raises(ValueError, match="num_classes"):
        flip_labels(jax.random.key(0), 4, 1, 0)
    for target in (-1, 10):
        with pytest.raises(ValueError, match="target"):
            flip_labels(jax.random.key(0), 4, 10, target)


# ---------------------------------------------------------------------------------------------
# The paper's eight transformations, grayscale queries, and torchvision's fixed 5 × 9 blur.

PAPER_NAMES = {"flip", "rotation", "color_jitter", "elastic", "blur", "invert", "color_switch", "random_affine"}


def test_transform_names_are_the_papers_eight():
    assert set(TRANSFORM_NAMES) == PAPER_NAMES and len(TRANSFORM_NAMES) == 8


def test_rotation_turns_a_known_pattern_by_quarter_and_half_turns():
    image = np.asarray(_image(1, size=9))
    # A fixed magnitude leaves only the random sign: +90° is counter-clockwise (np.rot90), -90° clockwise.
    quarter = _params(rotation_degrees=(90, 90))
    outs = np.asarray(jax.vmap(lambda k: apply_transform("rotation", k, image, quarter))(
        jax.random.split(jax.random.key(0), 16)))  # fmt: skip
    turns = []
    for out in outs:
        matches = [k for k in (1, -1) if np.allclose(out, np.rot90(image, k), atol=1e-5)]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {1, -1}
    # Point mapping: the pixel three rows above the centre moves three columns left of it under +90°.
    dot = np.zeros((9, 9, 1), np.float32)
    dot[1, 4] = 1.0
    turned = [np.asarray(apply_transform("rotation", k, dot, quarter)) for k in jax.random.split(jax.random.key(0), 4)]
    assert {tuple(np.argwhere(t[..., 0] > 0.5)[0]) for t in turned} == {(4, 1), (4, 7)}
    np.testing.assert_allclose(_apply("rotation", image, _params(rotation_degrees=(180, 180))), image[::-1, ::-1],
                               atol=1e-5)  # fmt: skip


def test_rotation_always_changes_its_input():
    image = _image(1, size=16)
    outs = jax.vmap(lambda k: apply_transform("rotation", k, image))(jax.random.split(jax.random.key(3), 32))
    change = np.abs(np.asarray(outs) - np.asarray(image)).max(axis=(1, 2, 3))
    assert change.min() > 0.1, change
    with pytest.raises(ValueError, match="rotation_degrees"):
        TransformParams(rotation_degrees=(-10, 30))


def test_grayscale_batch_never_returns_the_original():
    """On C = 1 no drawn transformation is an identity: colour switch is never drawn, every row differs."""
    image = _image(1)
    for seed in range(4):
        images, choice = transform_batch(jax.random.key(seed), image, TRANSFORM_NAMES, 50)
        assert "color_switch" not in {TRANSFORM_NAMES[c] for c in np.asarray(choice)}
        change = np.abs(np.asarray(images) - np.asarray(image)).max(axis=(1, 2, 3))
        assert change.min() > 1e-3, change
    # RGB images still draw colour switch, which changes them.
    _, choice = transform_batch(jax.random.key(0), _image(3), TRANSFORM_NAMES, 50)
    assert "color_switch" in {TRANSFORM_NAMES[c] for c in np.asarray(choice)}
    with pytest.raises(ValueError, match="grayscale"):
        transform_batch(jax.random.key(0), image, ("color_switch",), 4)


def _numpy_blur_2d(image, kx, ky, sigma):
    """float64 torchvision GaussianBlur: a [ky, kx] outer-product kernel, reflect padding, direct 2-D correlation."""
    image = np.asarray(image, np.float64)

    def taps(k):
        g = np.exp(-0.5 * (np.arange(-(k // 2), k // 2 + 1) / sigma) ** 2)
        return g / g.sum()

    kernel = np.outer(taps(ky), taps(kx))  # rows (height) x columns (width)
    ry, rx = ky // 2, kx // 2
    padded = np.pad(image, ((ry, ry), (rx, rx), (0, 0)), mode="reflect")
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for a in range(ky):
        for b in range(kx):
            out += kernel[a, b] * padded[a : a + h, b : b + w]
    return out


def test_blur_is_torchvisions_fixed_5_wide_9_tall_kernel():
    image = _image(3, size=12)
    for sigma in (8.0, 9.3, 10.0):
        out = _apply("blur", image, _params(blur_sigma=(sigma, sigma)))
        np.testing.assert_allclose(out, _numpy_blur_2d(image, 5, 9, sigma), atol=1e-6)
    # An impulse returns the kernel itself: 9 rows by 5 columns for every key, with one σ in [8, 10] on both axes.
    impulse = np.zeros((21, 21, 1), np.float32)
    impulse[10, 10] = 1.0
    sigmas = []
    for key in jax.random.split(jax.random.key(0), 12):
        kernel = np.asarray(apply_transform("blur", key, impulse))[..., 0]
        rows, cols = np.nonzero(kernel > 0)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 14, 8, 12)
        # Neighbour ratios exp(-1 / 2σ²) along each axis give the σ used.
        sigma_y = (-0.5 / np.log(kernel[11, 10] / kernel[10, 10])) ** 0.5
        sigma_x = (-0.5 / np.log(kernel[10, 11] / kernel[10, 10])) ** 0.5
        assert 7.9 < sigma_y < 10.1 and abs(sigma_x - sigma_y) < 0.1 * sigma_y
        sigmas.append(sigma_y)
    assert np.ptp(sigmas) > 0.5  # σ is drawn per call, not fixed
