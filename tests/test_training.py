"""Training: accuracy on real data, optimiser semantics, checkpoints and resume."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpoison.data import load_splits
from jaxpoison.models import create_model, to_functional
from jaxpoison.training import (
    CheckpointError,
    TrainRecipe,
    adam_recipe,
    checkpoint_manager,
    evaluate,
    reference_recipe,
    restore_latest,
    save,
    train,
)


def test_cnn_on_digits_reaches_90_percent():
    train_set, test_set = load_splits("digits")
    model = to_functional(create_model("cnn", train_set.image_shape, train_set.num_classes, seed=0))
    result = train(model, train_set, adam_recipe(epochs=8, batch_size=32), seed=0, progress=False)
    accuracy = evaluate(model.apply, result.params, result.state, test_set).accuracy
    assert accuracy >= 0.90, accuracy
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_reference_recipe_milestones_and_semantics():
    recipe = reference_recipe()
    assert recipe.milestones == (14, 25, 35) and recipe.nesterov and recipe.batch_size == 128
    schedule = recipe.schedule(steps_per_epoch=10)
    assert float(schedule(139)) == pytest.approx(0.1) and float(schedule(140)) == pytest.approx(0.01)
    assert float(schedule(350)) == pytest.approx(1e-4)


def test_sgd_recipe_matches_pytorch_update_rule():
    # PyTorch SGD(momentum=m, nesterov=True, weight_decay=wd): g' = g + wd*p; b = m*b + g';
    # p -= lr * (g' + m*b). Checked by hand for two steps on a quadratic.
    recipe = TrainRecipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    opt = recipe.optimizer_for(steps_per_epoch=100)
    p = jnp.array([1.0, -2.0])
    state = opt.init(p)
    ref_p, buf = np.array([1.0, -2.0]), np.zeros(2)
    for _ in range(2):
        grad = 2 * p  # d/dp of |p|^2
        updates, state = opt.update(grad, state, p)
        p = optax.apply_updates(p, updates)
        g = 2 * ref_p + 0.01 * ref_p
        buf = 0.9 * buf + g
        ref_p = ref_p - 0.1 * (g + 0.9 * buf)
    np.testing.assert_allclose(p, ref_p, rtol=1e-6)


def test_recipe_validation():
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainRecipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="milestones"):
        TrainRecipe(milestones=(5, 3))


def test_batch_larger_than_dataset_is_refused(tiny_dataset):
    model = to_functional(create_model("mlp", tiny_dataset.image_shape, tiny_dataset.num_classes))
    with pytest.raises(ValueError, match="exceeds"):
        train(model, tiny_dataset, adam_recipe(epochs=1, batch_size=1000), progress=False)


def test_checkpoint_round_trip(tmp_path):
    model = to_functional(create_model("resnet18", (8, 8, 3), 3, width=4))
    opt = optax.sgd(0.1, momentum=0.9)
    tree = {"params": model.params, "state": model.state, "opt_state": opt.init(model.params)}
    manager = checkpoint_manager(tmp_path)
    save(manager, 3, tree, {"epoch": 3})
    step, restored, meta = restore_latest(checkpoint_manager(tmp_path), tree)
    assert step == 3 and meta == {"epoch": 3}
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(a, b)


class _Interrupt(Exception):
    pass


def test_resume_after_interrupt_gives_identical_parameters(tmp_path, tiny_dataset):
    # A BatchNorm model with augmentation and SGD momentum: every kind of state must resume.
    recipe = dataclasses.replace(reference_recipe(epochs=3), batch_size=16, crop_padding=1)
    model = to_functional(create_model("resnet18", tiny_dataset.image_shape, tiny_dataset.num_classes, width=4))
    straight = train(model, tiny_dataset, recipe, seed=5, progress=False)

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(model, tiny_dataset, recipe, seed=5, checkpoint_dir=str(tmp_path), progress=False,
              on_epoch_end=stop_after_first_epoch)  # fmt: skip
    resumed = train(model, tiny_dataset, recipe, seed=5, checkpoint_dir=str(tmp_path), progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.step_losses.size == 2 * (len(tiny_dataset) // 16)  # only epochs 2 and 3 ran
    final = [jax.tree.leaves((r.params, r.state)) for r in (straight, resumed)]
    for a, b in zip(*final, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The same directory with another recipe is refused instead of silently mixed.
    with pytest.raises(CheckpointError, match="another run"):
        train(model, tiny_dataset, recipe.replace(learning_rate=0.05), seed=5, checkpoint_dir=str(tmp_path),
              progress=False)  # fmt: skip


def test_train_step_compiles_once(tiny_dataset):
    model = to_functional(create_model("mlp", tiny_dataset.image_shape, tiny_dataset.num_classes))
    from jaxpoison.training.train import make_train_step

    recipe = adam_recipe(epochs=1, batch_size=8)
    opt = recipe.optimizer_for(8)
    step = make_train_step(model, opt, recipe, tiny_dataset.mean, tiny_dataset.std)
    params, state = jax.tree.map(jnp.copy, (model.params, model.state))
    opt_state = opt.init(params)
    for s in range(3):
        x = jnp.asarray(tiny_dataset.images[s * 8 : (s + 1) * 8])
        y = jnp.asarray(tiny_dataset.labels[s * 8 : (s + 1) * 8])
        params, state, opt_state, _, _ = step(params, state, opt_state, jax.random.key(s), x, y)
    assert step._cache_size() == 1
