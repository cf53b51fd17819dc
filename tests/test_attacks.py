"""Triggers, the poisoned-dataset builder and attack metrics, down to the pixel."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpoison.attacks import (
    BlendedTrigger,
    PatchTrigger,
    PoisonConfig,
    PoisonError,
    TriggerError,
    attack_metrics,
    badnet_pixels,
    blended,
    default_blend_pattern,
    poison_dataset,
    resize_pattern,
    square_patch,
)
from jaxpoison.data import load_splits
from jaxpoison.models import create_model, to_functional
from jaxpoison.training import adam_recipe, train
from tests.conftest import make_dataset


def test_patch_arithmetic_is_exact():
    images = np.full((2, 4, 4, 3), 0.5, np.float32)
    mask = np.zeros((4, 4, 1), np.float32)
    mask[1, 2] = 1.0
    mask[3, 3] = 0.25
    pattern = np.zeros((4, 4, 3), np.float32)
    pattern[..., 0] = 1.0
    out = np.asarray(PatchTrigger(mask, pattern).apply(images))
    np.testing.assert_array_equal(out[:, 1, 2], [[1.0, 0.0, 0.0]] * 2)
    np.testing.assert_allclose(out[:, 3, 3], [[0.625, 0.375, 0.375]] * 2)
    untouched = np.ones((4, 4), bool)
    untouched[1, 2] = untouched[3, 3] = False
    np.testing.assert_array_equal(out[:, untouched], 0.5)


def test_badnet_pixels_match_the_reference_positions():
    trigger = badnet_pixels((32, 32, 3))
    rows, cols = np.nonzero(trigger.mask[..., 0])
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(28, 30), (29, 29), (30, 28), (30, 30)]
    out = np.asarray(trigger.apply(np.ones((32, 32, 3), np.float32)))
    assert out[28, 30].tolist() == [0, 0, 0] and out.sum() == 32 * 32 * 3 - 12
    big = badnet_pixels((160, 160, 3))
    assert big.mask.sum() == 4 * 25  # each pixel becomes a 5×5 block
    with pytest.raises(TriggerError, match="at least"):
        badnet_pixels((3, 3, 1))


def test_square_patch_position_colour_and_errors():
    trigger = square_patch((32, 32, 3), size=5, color=(1, 1, 0), margin=1)
    rows, cols = np.nonzero(trigger.mask[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (26, 30, 26, 30)
    np.testing.assert_array_equal(trigger.pattern[27, 27], [1, 1, 0])
    gray = square_patch((28, 28, 1), size=3, color=(1, 1, 0), corner="top-left", margin=0)
    assert gray.mask[:3, :3].all() and gray.pattern[0, 0, 0] == pytest.approx(2 / 3)
    with pytest.raises(TriggerError, match="does not fit"):
        square_patch((8, 8, 1), size=8, margin=1)
    with pytest.raises(TriggerError, match="unknown corner"):
        square_patch((8, 8, 1), corner="middle")
    with pytest.raises(TriggerError, match="made for"):
        square_patch((8, 8, 1)).apply(np.zeros((2, 9, 9, 1)))


def test_blended_limits_and_arithmetic():
    x = np.random.default_rng(0).random((3, 6, 6, 3)).astype(np.float32)
    pattern = default_blend_pattern((6, 6, 3))
    np.testing.assert_array_equal(np.asarray(BlendedTrigger(pattern, 0.0).apply(x)), x)
    np.testing.assert_allclose(np.asarray(BlendedTrigger(pattern, 1.0).apply(x)), np.broadcast_to(pattern, x.shape))
    np.testing.assert_allclose(np.asarray(BlendedTrigger(pattern, 0.2).apply(x)), 0.8 * x + 0.2 * pattern, rtol=1e-6)
    for bad in (-0.1, 1.5):
        with pytest.raises(TriggerError, match=r"\[0, 1\]"):
            blended((6, 6, 3), bad)
    np.testing.assert_array_equal(default_blend_pattern((6, 6, 3), 4), default_blend_pattern((6, 6, 3), 4))
    assert pattern.min() == 0.0 and pattern.max() == 1.0


def test_user_trigger_image_is_resized_and_checked():
    image = np.zeros((40, 20, 3), np.uint8)
    image[..., 1] = 255
    resized = resize_pattern(image, (8, 8, 3))
    assert resized.shape == (8, 8, 3)
    np.testing.assert_allclose(resized[..., 1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(resized[..., 0], 0.0, atol=1e-6)
    with pytest.raises(TriggerError, match="channels"):
        resize_pattern(image, (8, 8, 1))


def test_builder_counts_labels_indices_and_determinism():
    data = make_dataset(n=200, num_classes=4)
    trigger = square_patch(data.image_shape, size=2, color=(1.0,), margin=0)
    result = poison_dataset(data, trigger, PoisonConfig(target=1, rate=0.05, seed=3))
    assert len(result.poison_indices) == 10 and len(result.dataset) == 200
    np.testing.assert_array_equal(result.poison_indices, result.source_indices)
    assert np.all(data.labels[result.source_indices] != 1)  # all-to-one: never from the target class
    assert np.all(result.dataset.labels[result.poison_indices] == 1)
    assert np.all(result.dataset.images[result.poison_indices, -2:, -2:] == 1.0)
    clean = np.setdiff1d(np.arange(200), result.poison_indices)
    np.testing.assert_array_equal(result.dataset.images[clean], data.images[clean])
    again = poison_dataset(data, trigger, PoisonConfig(target=1, rate=0.05, seed=3))
    other = poison_dataset(data, trigger, PoisonConfig(target=1, rate=0.05, seed=4))
    np.testing.assert_array_equal(again.source_indices, result.source_indices)
    assert not np.array_equal(other.source_indices, result.source_indices)
    assert result.manifest["count"] == 10 and result.manifest["clean_hash"] == data.content_hash

    appended = poison_dataset(data, trigger, PoisonConfig(target=1, source=2, count=7, mode="append"))
    assert len(appended.dataset) == 207
    np.testing.assert_array_equal(appended.poison_indices, np.arange(200, 207))
    assert np.all(data.labels[appended.source_indices] == 2)
    np.testing.assert_array_equal(appended.dataset.images[:200], data.images)  # originals kept

    chosen = np.flatnonzero(data.labels == 0)[:4]
    explicit = poison_dataset(data, trigger, PoisonConfig(target=3, indices=tuple(chosen.tolist())))
    np.testing.assert_array_equal(explicit.source_indices, chosen)


def test_builder_errors():
    data = make_dataset(n=50, num_classes=4)
    trigger = square_patch(data.image_shape, size=2, color=(1.0,), margin=0)
    with pytest.raises(PoisonError, match="victim class equals the target"):
        PoisonConfig(target=2, source=2, rate=0.1)
    with pytest.raises(PoisonError, match="selects 0 poisons"):
        poison_dataset(data, trigger, PoisonConfig(target=1, rate=0.001))
    with pytest.raises(PoisonError, match="candidates exist"):
        poison_dataset(data, trigger, PoisonConfig(target=1, source=0, count=49))
    with pytest.raises(PoisonError, match="exactly one"):
        PoisonConfig(target=1, rate=0.1, count=3)
    target_example = int(np.flatnonzero(data.labels == 1)[0])
    with pytest.raises(PoisonError, match="outside the candidate pool"):
        poison_dataset(data, trigger, PoisonConfig(target=1, indices=(target_example,)))


def test_badnet_end_to_end_on_digits():
    train_set, test_set = load_splits("digits")
    trigger = square_patch(train_set.image_shape, size=2, color=(1.0,), margin=0)
    poisoned = poison_dataset(train_set, trigger, PoisonConfig(target=0, rate=0.05, seed=0))
    recipe = adam_recipe(epochs=10, batch_size=32)
    results = {}
    for name, data in (("clean", train_set), ("poisoned", poisoned.dataset)):
        model = to_functional(create_model("cnn", data.image_shape, data.num_classes, seed=0), data.mean, data.std)
        trained = train(model, data, recipe, seed=0, progress=False)
        results[name] = attack_metrics(trained.model, test_set, trigger, target=0)
    assert results["poisoned"]["asr"] >= 0.9, results["poisoned"]
    assert results["clean"]["asr"] < 0.3  # the trigger alone does not flip a clean model
    assert results["clean"]["clean_accuracy"] - results["poisoned"]["clean_accuracy"] <= 0.03
    assert set(results["poisoned"]["per_class_asr"]) == set(range(1, 10))


def test_badnet_pixel_value():
    white = badnet_pixels((28, 28, 1), value=1.0)
    assert white.pattern.max() == 1.0 and white.mask.sum() == 4
    with pytest.raises(TriggerError, match="value"):
        badnet_pixels((28, 28, 1), value=2.0)
