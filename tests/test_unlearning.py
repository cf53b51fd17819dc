"""Unlearning: exact pieces on hand-made arrays, and every method on the tiny BadNet victim."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.data import normalize
from jaxpoison.errors import InputError
from jaxpoison.experiments import ConfigError, RunStore, apply_overrides, get_preset, to_dict
from jaxpoison.experiments import pipeline as pipeline_module
from jaxpoison.experiments.pipeline import distill_config, make_selector, run_unlearner, unlearn_stage
from jaxpoison.experiments.report import unlearning_table
from jaxpoison.experiments.victim import accuracy, init_model, poison_success
from jaxpoison.models import create_model, output_layer, to_functional
from jaxpoison.training.evaluate import NonFiniteOutputError
from jaxpoison.unlearning import (
    DistillConfig,
    Selector,
    UnlearningDiverged,
    UnlearnResult,
    clean_rule,
    continued_training,
    dampen,
    importance,
    oracle_rule,
    select,
    split_forget_retain,
)
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


def _table(scores):
    return [{"candidate": name, **dict(zip(("validation_psr", "validation_accuracy"), v, strict=True))}
            for name, v in scores.items()]  # fmt: skip


def test_oracle_rule_prefers_accuracy_among_low_psr_candidates():
    scores = {"a": (0.5, 0.99), "b": (0.05, 0.80), "c": (0.0, 0.85), "d": (0.2, 0.95)}
    rule = oracle_rule(max_psr=0.1)
    assert rule(_table(scores)) == 2
    assert oracle_rule(max_psr=0.01)(_table(scores)) == 2  # the only one at PSR 0
    assert rule(_table({k: scores[k] for k in "ad"})) == 1  # none qualifies: the lowest PSR wins
    selector = Selector("oracle", lambda m: dict(zip(("validation_psr", "validation_accuracy"), scores[m],
                                                     strict=True)), rule)  # fmt: skip
    best, table = select([(name, name) for name in scores], selector)
    assert best == 2 and [t["candidate"] for t in table] == list(scores)
    assert select([(name, name) for name in scores], None) == (3, [])  # no selector: the last one


def test_a_diverged_candidate_is_listed_and_never_chosen():
    def score(model):
        if model == "nan":
            raise NonFiniteOutputError("non-finite outputs")
        return {"validation_psr": 0.0, "validation_accuracy": {"a": 0.9, "b": 0.8}[model]}

    selector = Selector("oracle", score, oracle_rule(max_psr=0.1))
    best, table = select([("a", "a"), ("nan", "nan"), ("b", "b")], selector)
    assert best == 0 and table[1] == {"candidate": "nan", "diverged": True}
    best, _ = select([("nan", "nan"), ("b", "b")], selector)
    assert best == 1  # the index among all candidates, not among the finite ones
    with pytest.raises(InputError, match="every one of the 2 unlearning candidates diverged"):
        select([("nan", "nan"), ("nan", "nan")], selector)


def test_clean_rule_forgets_most_among_candidates_that_keep_validation_accuracy():
    def table(rows):
        return [{"candidate": i, "validation_accuracy": a, "forget_accuracy": f} for i, (a, f) in enumerate(rows)]

    rule = clean_rule(reference_accuracy=0.90, tolerance=0.02)
    # 0: keeps accuracy, still fits the flagged labels; 1: forgets, keeps accuracy; 2: forgets more, loses 5 points
    assert rule(table([(0.91, 0.95), (0.89, 0.10), (0.85, 0.0)])) == 1
    assert rule(table([(0.89, 0.10), (0.90, 0.10)])) == 1  # a tie in forgetting goes to accuracy
    assert rule(table([(0.80, 0.0), (0.85, 0.5)])) == 1  # nothing keeps accuracy: lose the least
    assert rule(table([(0.89, None), (0.90, None)])) == 1  # nothing flagged: accuracy alone
    with pytest.raises(ValueError, match="tolerance"):
        clean_rule(0.9, -0.1)


def test_dampen_is_exact_on_hand_made_importances():
    params = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    forget = {"w": jnp.array([10.0, 1.0, 0.0, 50.0])}
    retain = {"w": jnp.array([1.0, 1.0, 1.0, 1.0])}
    out = dampen(params, forget, retain, 2.0, 4.0)
    # selected: 10 > 2 and 50 > 2; factors min(4·1/10, 1) = 0.4 and min(4/50, 1) = 0.08
    np.testing.assert_allclose(out["w"], [0.4, 2.0, 3.0, 0.32], rtol=1e-6)


def test_importance_is_the_mean_squared_minibatch_gradient():
    data = make_dataset(n=12, shape=(4, 4, 1), num_classes=3)
    model = to_functional(create_model("logreg", data.image_shape, 3, seed=0), data.mean, data.std)

    def grad_sq(idx):
        def loss(p):
            x = normalize(jnp.asarray(data.images[idx]), data.mean, data.std)
            logits = model.structure.apply(p, model.state, x)  # the raw network on normalised images
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
    recipe = prepared.config.victim.recipe.replace(optimizer="sgd", learning_rate=0.05, nesterov=True)
    result = continued_training(victim, data, prepared.poisoning.poison_indices, recipe, fresh_head=fresh,
                                progress=False)  # fmt: skip
    assert result.info["reset_head"] and result.info["method"] == "cf_reset"
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


class _RecordingTrigger:
    """Counts every use; with no real trigger behind it, using it fails the test."""

    def __init__(self, real=None):
        self.real, self.calls = real, 0

    def apply(self, images):
        self.calls += 1
        if self.real is None:
            raise AssertionError("the trigger was applied: selection used knowledge of the attack")
        return self.real.apply(images)


class _Forbidden:
    """A split that fails the test as soon as anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")


def _blind(prepared, trigger):
    """``prepared`` with the trigger swapped for ``trigger`` and an unreadable test split."""
    return prepared._replace(poisoning=prepared.poisoning._replace(trigger=trigger),
                             splits=prepared.splits._replace(test=_Forbidden()))  # fmt: skip


@pytest.mark.parametrize("method", ["ssd", "scrub", "badt"])
def test_approximate_unlearners_select_without_the_trigger_and_lower_psr(tiny_run, method):
    prepared = tiny_run.prepared
    poisons = prepared.poisoning.poison_indices
    trigger = _RecordingTrigger()
    result = run_unlearner(_blind(prepared, trigger), method, poisons, progress=False)
    assert trigger.calls == 0 and result.info["selection"] == "clean"
    scores = result.info["candidates"]
    assert scores and all({"validation_accuracy", "forget_accuracy"} <= set(s) for s in scores), scores
    assert not any("validation_psr" in s for s in scores)
    victim = prepared.victim.model
    assert jax.tree.structure(result.model.params) == jax.tree.structure(victim.params)
    for new, old in zip(jax.tree.leaves(result.model.params), jax.tree.leaves(victim.params), strict=True):
        assert new.shape == old.shape and bool(jnp.all(jnp.isfinite(new)))
    assert "chosen" in result.info and result.info["forgotten"] == poisons.size
    # The point of unlearning the true poisons: the backdoor weakens (measured on the test set, after selection).
    metrics = poison_success(result.model, prepared.poisoning, prepared.config, prepared.splits.test)
    assert metrics["psr"] < tiny_run.victim_record["psr"], (metrics, tiny_run.victim_record)


@pytest.mark.parametrize("method", ["scrub", "badt"])
def test_clean_selection_finds_an_unlearned_checkpoint_when_there_is_a_choice(tiny_run, method):
    # The default budget on this tiny preset is 3 steps (10 % of 10 epochs over 1,367 images at
    # batch 512): one candidate, so nothing to choose. With the reference's 40 steps there are
    # several, and the trigger-free rule has to find one that lost the backdoor but kept accuracy.
    prepared = tiny_run.prepared
    config = apply_overrides(prepared.config, [f"unlearning.{method}_budget=none"])  # distill.steps: 40
    blind = _blind(prepared._replace(config=config), _RecordingTrigger())
    result = run_unlearner(blind, method, prepared.poisoning.poison_indices, progress=False)
    assert len(result.info["candidates"]) > 1
    metrics = poison_success(result.model, prepared.poisoning, prepared.config, prepared.splits.test)
    assert metrics["psr"] <= 0.1, (metrics, result.info["chosen"], result.info["candidates"])
    assert metrics["clean_accuracy"] >= tiny_run.victim_record["clean_accuracy"] - 0.02, metrics


def test_oracle_selection_uses_the_trigger_and_every_report_says_so(tiny_run, tmp_path):
    prepared = tiny_run.prepared
    config = apply_overrides(prepared.config, ["unlearning.selection=oracle"])
    trigger = _RecordingTrigger(prepared.poisoning.trigger)
    oracle = prepared._replace(config=config, store=RunStore(tmp_path, to_dict(config)),
                               poisoning=prepared.poisoning._replace(trigger=trigger))  # fmt: skip
    result = run_unlearner(oracle, "scrub", prepared.poisoning.poison_indices, progress=False)
    assert trigger.calls > 0 and result.info["selection"] == "oracle"
    assert all("validation_psr" in s for s in result.info["candidates"])
    record = unlearn_stage(oracle, "truth", "scrub", prepared.poisoning.poison_indices, progress=False)
    assert record["selection"] == "oracle"
    table = unlearning_table([record, {**record, "unlearner": "eu", "selection": None}], max_psr=0.05)
    rows = table.splitlines()
    assert "| scrub (oracle selection) |" in rows[2] and "oracle" not in rows[3]
    assert "knowledge of the attack" in table  # the footnote under the table
    clean = apply_overrides(prepared.config, ["unlearning.selection=clean"])
    assert "oracle" not in unlearning_table([{**record, "selection": clean.unlearning.selection}], max_psr=0.05)


def test_selector_scores_on_validation_and_flagged_data_only(tiny_run):
    prepared = tiny_run.prepared
    with pytest.raises(AssertionError, match="test split"):
        len(_Forbidden())  # the guard below really refuses
    poisons, victim = prepared.poisoning.poison_indices, prepared.victim.model
    reference = accuracy(victim, prepared.splits.validation)
    clean = make_selector(_blind(prepared, _RecordingTrigger()), poisons, "clean")
    scores = clean.score(victim)
    assert clean.name == "clean" and scores["validation_accuracy"] == pytest.approx(reference)
    assert 0.5 < reference <= 1.0 and len(prepared.splits.validation) > 0
    assert scores["forget_accuracy"] > 0.9  # the victim fits its poisons' target labels
    trigger = _RecordingTrigger(prepared.poisoning.trigger)
    oracle = make_selector(_blind(prepared, trigger), poisons, "oracle")
    scores = oracle.score(victim)
    assert oracle.name == "oracle" and trigger.calls > 0 and scores["validation_psr"] > 0.5
    assert scores["validation_accuracy"] == pytest.approx(reference)


def test_selection_mode_is_checked():
    with pytest.raises(ConfigError, match=r"'clean'.*'oracle'"):
        apply_overrides(get_preset("digits-badnet-tiny"), ["unlearning.selection=psr"])


@pytest.mark.parametrize("method", ["scrub", "badt"])
def test_approximate_unlearners_get_a_tenth_of_the_victims_training_budget(tiny_run, method):
    prepared = tiny_run.prepared
    u, recipe, n = prepared.config.unlearning, prepared.config.victim.recipe, len(prepared.poisoning.dataset)
    per_epoch = math.ceil(n / DistillConfig().batch_size)
    expected = math.ceil(0.1 * recipe.epochs * per_epoch)
    result = run_unlearner(prepared, method, prepared.poisoning.poison_indices, progress=False)
    assert result.info["steps"] == expected, (result.info["steps"], expected)
    # It follows the victim's recipe and the data size; without a budget, the configured steps.
    longer = apply_overrides(prepared.config, ["victim.recipe.epochs=40"])
    assert distill_config(longer, method, n).steps == math.ceil(0.1 * 40 * per_epoch)
    assert distill_config(longer, method, 4 * n).steps == math.ceil(0.1 * 40 * math.ceil(4 * n / 512))
    fixed = apply_overrides(prepared.config, [f"unlearning.{method}_budget=none",
                                              f"unlearning.{method}.distill.steps=40"])  # fmt: skip
    assert distill_config(fixed, method, n).steps == 40
    # The rest of the optimiser settings are the configured ones.
    faster = apply_overrides(prepared.config, [f"unlearning.{method}.distill.learning_rate=0.5"])
    assert distill_config(faster, method, n).learning_rate == 0.5
    assert getattr(u, f"{method}_budget") == 0.1


def test_cf_is_plain_continued_training_and_cf_reset_resets_the_head(tiny_run, monkeypatch):
    prepared = tiny_run.prepared
    seen = {}

    def recording(victim, dataset, flagged, recipe, *, fresh_head=None, **kw):
        seen["fresh_head"] = fresh_head
        return UnlearnResult(victim, {})

    monkeypatch.setattr(pipeline_module, "continued_training", recording)
    for preset in ("digits-badnet-tiny", "fmnist-badnet", "fmnist-blended", "fmnist-badnet-demo"):
        config = dataclasses.replace(prepared.config, unlearning=get_preset(preset).unlearning)
        run_unlearner(prepared._replace(config=config), "cf", prepared.poisoning.poison_indices, progress=False)
        assert seen.pop("fresh_head") is None, preset  # the paper's CF: the victim as it is
        run_unlearner(prepared._replace(config=config), "cf_reset", prepared.poisoning.poison_indices,
                      progress=False)  # fmt: skip
        fresh = seen.pop("fresh_head")
        assert fresh is not None, preset
        assert jax.tree.structure(fresh.params) == jax.tree.structure(prepared.victim.model.params)


def test_an_unlearner_that_diverges_is_a_diverged_row_not_a_failed_run(tiny_run, tmp_path, monkeypatch):
    prepared = tiny_run.prepared
    fresh = prepared._replace(store=RunStore(tmp_path, to_dict(prepared.config)))

    def diverge(*args, **kwargs):
        raise UnlearningDiverged("every one of the 1 unlearning candidates diverged (non-finite outputs)")

    monkeypatch.setattr(pipeline_module, "run_unlearner", diverge)
    record = unlearn_stage(fresh, "truth", "scrub", prepared.poisoning.poison_indices, progress=False)
    assert record["psr"] is None and record["clean_accuracy"] is None and "diverged" in record["diverged"]
    row = unlearning_table([record], max_psr=0.05).splitlines()[2]
    assert "| diverged | — | ✗ |" in row
