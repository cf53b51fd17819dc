"""Witches' Brew: the matching loss falls, alignment rises, budgets hold, labels stay clean.

The jitted brewing step is checked against an eager re-implementation of the step as it
was before it was compiled (flattened gradients, reverse-over-reverse autodiff of the
cosine, one call per batch), and a second brew must not compile anything.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpoison.attacks import BrewConfig, apply_brew, brew_poisons
from jaxpoison.attacks.witches_brew import gradient_alignment
from jaxpoison.data import augment_batch, load_splits, normalize
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.models import create_model, to_functional
from jaxpoison.training import adam_recipe, train

INTENDED = 1


@pytest.fixture(scope="module")
def setup():
    train_set, test_set = load_splits("digits")
    module = create_model("cnn", train_set.image_shape, 10, seed=0, width=8, hidden=32)
    model = to_functional(module, train_set.mean, train_set.std)
    model = train(model, train_set, adam_recipe(epochs=3, batch_size=32), progress=False).model
    poisons = np.flatnonzero(train_set.labels == INTENDED)[:24]
    target = test_set.images[np.flatnonzero(test_set.labels == 7)[0]]
    return model, train_set, poisons, target


def _flat_grad(model, params, x, y):
    """Flattened gradient of the mean loss at *normalised* inputs ``x`` (the raw network, normalised by hand)."""
    logits = lambda p: model.structure.apply(p, model.state, x)
    grads = jax.grad(lambda p: jnp.mean(jax.vmap(cross_entropy)(logits(p), y)))(params)
    return jnp.concatenate([g.reshape(-1) for g in jax.tree.leaves(grads)])


def _reference_brew(model, dataset, poisons, target, intended, config):
    """The pre-jit brewing loop, eager, for one restart: ``(delta, losses)``."""
    mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
    g_t = _flat_grad(model, model.params, normalize(jnp.asarray(target)[None], mean, std), jnp.asarray([intended]))
    g_t = g_t / jnp.linalg.norm(g_t)
    images, labels = jnp.asarray(dataset.images[poisons]), jnp.asarray(dataset.labels[poisons])
    n = images.shape[0]
    batches = [np.arange(s, min(s + config.batch_size, n)) for s in range(0, n, config.batch_size)]

    def matching_loss(delta, x, y, key):
        z = x + delta
        if config.augment:
            z = augment_batch(key, z, config.padding, True)
        g = _flat_grad(model, model.params, normalize(z, mean, std), y)
        return 1.0 - jnp.dot(g_t, g) / (jnp.linalg.norm(g) + 1e-12)

    milestones = {int(config.steps / d + 1e-6): 0.1 for d in (2.667, 1.6, 1.142)}
    schedule = optax.piecewise_constant_schedule(config.learning_rate * config.epsilon,
                                                 {k: v for k, v in milestones.items() if k})  # fmt: skip
    optimizer = optax.adam(schedule)

    def project(delta):
        return jnp.clip(images + jnp.clip(delta, -config.epsilon, config.epsilon), 0.0, 1.0) - images

    key, init_key = jax.random.split(jax.random.key(config.seed))
    delta = project(jax.random.normal(init_key, images.shape) * config.epsilon)
    opt_state = optimizer.init(delta)
    losses = []
    for step in range(config.steps):
        grad, total = jnp.zeros_like(delta), 0.0
        for b, idx in enumerate(batches):
            step_key = jax.random.fold_in(jax.random.fold_in(key, step), b)
            loss, g = jax.value_and_grad(matching_loss)(delta[idx], images[idx], labels[idx], step_key)
            grad = grad.at[idx].set(g)
            total += float(loss) * idx.size / n
        updates, opt_state = optimizer.update(jnp.sign(grad), opt_state, delta)
        delta = project(optax.apply_updates(delta, updates))
        losses.append(total)
    return np.asarray(delta), np.asarray(losses)


def _alignment(model, dataset, poisons, delta, target, intended):
    """Cosine between the target's adversarial gradient and the poisons' (all at once, no augmentation)."""
    mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
    g_t = _flat_grad(model, model.params, normalize(jnp.asarray(target)[None], mean, std), jnp.asarray([intended]))
    x = normalize(jnp.asarray(dataset.images[poisons] + delta), mean, std)
    g_p = _flat_grad(model, model.params, x, jnp.asarray(dataset.labels[poisons]))
    return float(jnp.dot(g_t, g_p) / (jnp.linalg.norm(g_t) * jnp.linalg.norm(g_p)))


@pytest.mark.parametrize("augment", [False, True])
def test_jitted_step_matches_eager_reference(setup, augment):
    model, train_set, poisons, target = setup
    # 24 poisons in batches of 10: two full batches and a remainder of 4, all three code paths.
    config = BrewConfig(epsilon=8 / 255, steps=4, restarts=1, batch_size=10, augment=augment, padding=1, seed=3)
    brew = brew_poisons(model, train_set, poisons, target, INTENDED, config, progress=False)
    delta, losses = _reference_brew(model, train_set, poisons, target, INTENDED, config)
    np.testing.assert_allclose(brew.losses[0], losses, atol=2e-6)
    # A sign of a near-zero gradient could differ between the two; it never did, so demand equality.
    np.testing.assert_allclose(brew.perturbations, delta, atol=1e-6)
    assert np.abs(brew.perturbations).max() > 0.5 * config.epsilon  # δ moved, so the comparison has teeth
    expected = _alignment(model, train_set, poisons, brew.perturbations, target, INTENDED)
    np.testing.assert_allclose(brew.alignments, [expected], atol=1e-5)


def test_brew_decreases_matching_loss_within_budget(setup):
    model, train_set, poisons, target = setup
    # Without augmentation the objective is deterministic, so progress is measurable in few steps.
    config = BrewConfig(epsilon=8 / 255, steps=25, restarts=2, batch_size=16, augment=False, seed=0)
    brew = brew_poisons(model, train_set, poisons, target, INTENDED, config, progress=False)
    assert brew.losses.shape == (2, 25)
    for losses in brew.losses:
        assert losses[-1] < losses[0] - 0.02  # gradient matching makes progress
    assert brew.alignments.shape == (2,)
    assert brew.best_restart == int(np.argmax(brew.alignments))
    before = _alignment(model, train_set, poisons, 0.0, target, INTENDED)
    assert brew.alignments.min() > before + 0.02  # and the full poison set's gradient turns toward the target's
    np.testing.assert_allclose(gradient_alignment(model, train_set, poisons, 0.0, target, INTENDED), before, atol=1e-5)
    best = gradient_alignment(model, train_set, poisons, brew.perturbations, target, INTENDED, batch_size=7)
    np.testing.assert_allclose(best, brew.alignments[brew.best_restart], atol=1e-5)
    assert np.abs(brew.perturbations).max() <= config.epsilon + 1e-6
    poisoned = apply_brew(train_set, poisons, brew)
    np.testing.assert_array_equal(poisoned.labels, train_set.labels)  # clean-label
    assert poisoned.images.min() >= 0.0 and poisoned.images.max() <= 1.0
    others = np.setdiff1d(np.arange(len(train_set)), poisons)
    np.testing.assert_array_equal(poisoned.images[others], train_set.images[others])
    assert np.abs(poisoned.images[poisons] - train_set.images[poisons]).max() > 0


def test_second_brew_does_not_compile(setup):
    model, train_set, poisons, target = setup
    # A learning rate no other test uses, so that the first brew here has to compile its step.
    config = BrewConfig(epsilon=8 / 255, steps=3, restarts=2, learning_rate=0.37, batch_size=10, padding=1, seed=0)
    events = []
    listener = lambda event, *_, **__: events.append(event)
    compiled = lambda: [e for e in events if e == "/jax/core/compile/backend_compile_duration"]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        brew_poisons(model, train_set, poisons, target, INTENDED, config, progress=False)
        assert compiled()  # the listener sees compilations
        events.clear()
        # Another seed and intended class, with progress reports: none of them is part of the compiled step.
        again = dataclasses.replace(config, seed=5)
        brew_poisons(model, train_set, poisons, target, 3, again, progress=True, report_every=2)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled() == []


def test_brew_errors(setup):
    model, train_set, poisons, target = setup
    with pytest.raises(ValueError, match="epsilon"):
        BrewConfig(epsilon=0.0)
    with pytest.raises(ValueError, match="no poison"):
        brew_poisons(model, train_set, np.array([], int), target, INTENDED, progress=False)
    with pytest.raises(ValueError, match="shape"):
        brew_poisons(model, train_set, poisons, target[:4], INTENDED, progress=False)
