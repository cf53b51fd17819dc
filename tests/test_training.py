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
    model = to_functional(create_model("cnn", train_set.image_shape, train_set.num_classes, seed=0), train_set.mean,
                          train_set.std)  # fmt: skip
    result = train(model, train_set, adam_recipe(epochs=8, batch_size=32), seed=0, progress=False)
    accuracy = evaluate(result.model, test_set).accuracy
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
    model = to_functional(create_model("mlp", tiny_dataset.image_shape, tiny_dataset.num_classes), tiny_dataset.mean,
                          tiny_dataset.std)  # fmt: skip
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
    model = to_functional(create_model("resnet18", tiny_dataset.image_shape, tiny_dataset.num_classes, width=4),
                          tiny_dataset.mean, tiny_dataset.std)  # fmt: skip
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


def test_train_step_compiles_once_per_architecture(tiny_dataset):
    from jaxpoison.training.train import train_step

    recipe = adam_recipe(epochs=1, batch_size=8)
    opt = recipe.optimizer_for(8)
    before = train_step._cache_size()
    for seed in (0, 1):  # a fresh model of the same architecture reuses the compiled step
        model = jax.tree.map(jnp.copy, to_functional(create_model("mlp", tiny_dataset.image_shape,
                                                                  tiny_dataset.num_classes, seed=seed)))  # fmt: skip
        opt_state = opt.init(model.params)
        for s in range(3):
            x = jnp.asarray(tiny_dataset.images[s * 8 : (s + 1) * 8])
            y = jnp.asarray(tiny_dataset.labels[s * 8 : (s + 1) * 8])
            model, opt_state, _, _ = train_step(model, opt_state, jax.random.key(s), x, y, recipe=recipe,
                                                steps_per_epoch=8)  # fmt: skip
    assert train_step._cache_size() == before + 1


def test_training_a_model_without_the_datasets_normalisation_says_so(tiny_dataset):
    import warnings

    from jaxpoison.training import UnnormalisedInputWarning

    recipe = adam_recipe(epochs=1, batch_size=8)
    raw = to_functional(create_model("logreg", tiny_dataset.image_shape, tiny_dataset.num_classes))
    with pytest.warns(UnnormalisedInputWarning, match="to_functional\\(module, data.mean, data.std\\)"):
        train(raw, tiny_dataset, recipe, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        train(raw.with_normalization(tiny_dataset.mean, tiny_dataset.std), tiny_dataset, recipe, progress=False)
        train(raw.with_normalization(0.0, 1.0), tiny_dataset, recipe, progress=False)  # raw inputs on purpose


def test_the_loop_takes_another_order_key_and_optimizer_with_its_own_step(tiny_dataset):
    recipe = adam_recipe(epochs=2, batch_size=8)
    model = to_functional(create_model("logreg", tiny_dataset.image_shape, tiny_dataset.num_classes),
                          tiny_dataset.mean, tiny_dataset.std)  # fmt: skip
    with pytest.raises(ValueError, match="needs the step_fn"):
        train(model, tiny_dataset, recipe, optimizer=optax.sgd(0.1), progress=False)
    seen = []
    order = lambda epoch: seen.append(epoch) or np.arange(len(tiny_dataset))[::-1]
    sgd = optax.sgd(0.1)

    @jax.jit
    def step(m, o, k, x, y):  # plain SGD on the cross-entropy, no augmentation
        def loss(p):
            logits = m.replace(params=p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(m.params)
        updates, o = sgd.update(grads, o, m.params)
        return m.replace(params=optax.apply_updates(m.params, updates)), o, value, jnp.sum(logits.argmax(-1) == y)

    a = train(model, tiny_dataset, recipe, step_fn=step, optimizer=sgd, order=order, progress=False)
    b = train(model, tiny_dataset, recipe, step_fn=step, optimizer=sgd, order=order, key=jax.random.key(7),
              progress=False)  # fmt: skip
    assert seen == [0, 1, 0, 1]  # asked once per epoch, in order
    # A fixed reversed order and plain SGD: the runs agree (no augmentation, so the key does not matter).
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    default = train(model, tiny_dataset, recipe, progress=False)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(default.params),
                                                          strict=True))  # fmt: skip
