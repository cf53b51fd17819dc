"""Unlearning: exact pieces on hand-made arrays, and every method on the tiny BadNet victim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.experiments.pipeline import make_selector, run_unlearner
from jaxpoison.experiments.victim import init_model, poison_success, recipe_of
from jaxpoison.models import create_model, output_layer, to_functional
from jaxpoison.unlearning import continued_training, dampen, importance, select, split_forget_retain
from jaxpoison.unlearning.distill import kl_to_teacher
from tests.conftest import make_dataset


def test_split_forget_retain_and_its_errors():
    data = make_dataset(n=10)
    forget, retain, idx = split_forget_retain(data, [7, 2, 2])
    assert idx.tolist() == [2, 7] and len(forget) == 2 and len(retain) == 8
    np.testing.assert_array_equal(forget.images, data.images[[2, 7]])
    with pytest.raises(ValueError, match="outside"):
        split_forget_retain(data, [3, 10])
    with pytest.raises(ValueError, match="outside"):
        split_forget_retain(data, [-1])
    with pytest.raises(ValueError, match="every training point"):
        split_forget_retain(data, np.arange(10))
    with pytest.raises(ValueError, match="integers"):
        split_forget_retain(data, [0.5])


def test_select_prefers_accuracy_among_low_psr_candidates():
    scores = {"a": (0.5, 0.99), "b": (0.05, 0.80), "c": (0.0, 0.85), "d": (0.2, 0.95)}
    candidates = [(name, name) for name in scores]
    best, table = select(candidates, lambda m: scores[m], max_psr=0.1)
    assert candidates[best][0] == "c" and len(table) == 4
    best, _ = select(candidates, lambda m: scores[m], max_psr=0.01)
    assert candidates[best][0] == "c"  # the only one at PSR 0
    best, _ = select(candidates[:1] + candidates[3:], lambda m: scores[m], max_psr=0.1)
    assert best == 1  # none qualifies: the lowest PSR wins
    assert select(candidates, None)[0] == 3


def test_dampen_is_exact_on_hand_made_importances():
    params = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    forget = {"w": jnp.array([10.0, 1.0, 0.0, 50.0])}
    retain = {"w": jnp.array([1.0, 1.0, 1.0, 1.0])}
    out = dampen(params, forget, retain, 2.0, 4.0)
    # selected: 10 > 2 and 50 > 2; factors min(4·1/10, 1) = 0.4 and min(4/50, 1) = 0.08
    np.testing.assert_allclose(out["w"], [0.4, 2.0, 3.0, 0.32], rtol=1e-6)


def test_importance_is_the_mean_squared_minibatch_gradient():
    data = make_dataset(n=12, shape=(4, 4, 1), num_classes=3)
    model = to_functional(create_model("logreg", data.image_shape, 3, seed=0))

    def grad_sq(idx):
        def loss(p):
            x = (jnp.asarray(data.images[idx]) - data.mean) / data.std
            logits = model.apply(p, model.state, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), data.labels[idx][:, None], 1))

        return jax.tree.map(jnp.square, jax.grad(loss)(model.params))

    expected = jax.tree.map(lambda a, b: (a + b) / 2, grad_sq(np.arange(6)), grad_sq(np.arange(6, 12)))
    got = importance(model, data, batch_size=6)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-9)


def test_kl_to_teacher_matches_its_definition():
    s, t = jnp.array([[1.0, 2.0, 0.5]]), jnp.array([[0.2, 0.1, 3.0]])
    p_t = jax.nn.softmax(t / 2.0)
    expected = jnp.sum(p_t * (jnp.log(p_t) - jax.nn.log_softmax(s / 2.0)))
    np.testing.assert_allclose(kl_to_teacher(s, t, 2.0)[0], expected, rtol=1e-6)
    assert float(kl_to_teacher(t, t, 1.0)[0]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("method", ["eu", "cf"])
def test_retraining_on_the_true_retain_set_removes_the_backdoor(tiny_run, method):
    prepared = tiny_run.prepared
    assert tiny_run.victim_record["psr"] > 0.5  # the backdoor took
    result = run_unlearner(prepared, method, prepared.poisoning.poison_indices, progress=False)
    metrics = poison_success(result.model, prepared.poisoning, prepared.config, prepared.splits.test)
    assert metrics["psr"] <= 0.05, metrics
    assert metrics["clean_accuracy"] >= tiny_run.clean_record["clean_accuracy"] - 0.05, metrics


def test_cf_with_a_reset_head_starts_from_a_fresh_output_layer_and_removes_the_backdoor(tiny_run):
    prepared = tiny_run.prepared
    victim, data = prepared.victim.model, prepared.poisoning.dataset
    fresh = init_model(prepared.config.victim, data, 123)
    recipe = recipe_of(prepared.config.victim).replace(optimizer="sgd", learning_rate=0.05, nesterov=True)
    result = continued_training(victim, data, prepared.poisoning.poison_indices, recipe, fresh_head=fresh,
                                progress=False)  # fmt: skip
    assert result.info["reset_head"]
    metrics = poison_success(result.model, prepared.poisoning, prepared.config, prepared.splits.test)
    assert metrics["psr"] <= 0.05, metrics
    assert metrics["clean_accuracy"] >= tiny_run.clean_record["clean_accuracy"] - 0.05, metrics
    # One step of training from the reset head: the output layer moved away from the fresh one,
    # not from the victim's (which it never saw).
    one_step = recipe.replace(epochs=1)
    tiny = data.subset(np.arange(32))
    stepped = continued_training(victim, tiny, [], one_step.replace(batch_size=32), fresh_head=fresh, progress=False)
    head = output_layer(victim, data.image_shape)
    for new, start, old in zip(jax.tree.leaves(stepped.model.params[head]), jax.tree.leaves(fresh.params[head]),
                               jax.tree.leaves(victim.params[head]), strict=True):  # fmt: skip
        assert float(jnp.abs(new - start).max()) < float(jnp.abs(new - old).max())


@pytest.mark.parametrize("method", ["ssd", "scrub", "badt"])
def test_approximate_unlearners_return_finite_models_of_the_victims_structure(tiny_run, method):
    prepared = tiny_run.prepared
    result = run_unlearner(prepared, method, prepared.poisoning.poison_indices, progress=False)
    victim = prepared.victim.model
    assert jax.tree.structure(result.model.params) == jax.tree.structure(victim.params)
    for new, old in zip(jax.tree.leaves(result.model.params), jax.tree.leaves(victim.params), strict=True):
        assert new.shape == old.shape and bool(jnp.all(jnp.isfinite(new)))
    assert any(not np.allclose(n, o) for n, o in zip(jax.tree.leaves(result.model.params),
                                                     jax.tree.leaves(victim.params), strict=True))  # fmt: skip
    assert "chosen" in result.info and result.info["forgotten"] == prepared.poisoning.poison_indices.size


def test_selector_scores_on_validation_data_only(tiny_run):
    selector = make_selector(tiny_run.prepared)
    psr, accuracy = selector(tiny_run.prepared.victim.model)
    assert 0.0 <= psr <= 1.0 and 0.5 < accuracy <= 1.0
    assert len(tiny_run.prepared.splits.validation) > 0
