"""Δ-Influence: the voting rule, query construction, and detection on a tiny BadNet victim."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpoison.detection import DeltaConfig, delta_influence, detection_metrics, make_queries, suspicion, vote
from jaxpoison.detection.threshold import robust_threshold, threshold_flags
from jaxpoison.models import Normalization


def test_vote_counts_rows_below_tau_and_flags_with_tolerance():
    delta = np.array(
        [
            [-1.0, -2.0, 0.5, 0.0, -3.0],
            [-1.0, 1.0, -0.5, -0.1, -3.0],
            [-1.0, -2.0, -0.5, -0.1, -3.0],
            [-1.0, -2.0, 0.7, -0.1, 2.0],
        ]
    )
    counts, flagged = vote(delta, tau=0.0, n_tol=1)
    np.testing.assert_array_equal(counts, [4, 3, 2, 3, 3])  # 0.0 is not < 0
    np.testing.assert_array_equal(flagged, [True, True, False, True, True])
    _, strict = vote(delta, tau=0.0, n_tol=0)
    np.testing.assert_array_equal(strict, [True, False, False, False, False])
    counts, _ = vote(delta, tau=-1.5, n_tol=0)
    np.testing.assert_array_equal(counts, [0, 3, 0, 0, 3])


def test_vote_refuses_a_tolerance_that_flags_everything():
    with pytest.raises(ValueError, match="n_tol"):
        vote(np.zeros((3, 4)), 0.0, 3)
    with pytest.raises(ValueError, match="n_tol"):
        DeltaConfig(n_b=5, n_tol=5)


def test_suspicion_orders_by_count_then_by_mean_delta():
    counts = np.array([3, 3, 2, 0])
    delta = np.array([[-1.0, -5.0, -100.0, 50.0], [-1.0, -5.0, -100.0, 50.0]])
    score = suspicion(counts, delta)
    assert list(np.argsort(-score)) == [1, 0, 2, 3]  # a count always beats a larger mean drop
    assert np.all(np.abs(score - counts) < 0.5)


def test_config_rejects_unknown_choices():
    for bad in ({"modify": "pixels"}, {"space": "hsv"}, {"transforms": ("swirl",)}, {"aggregate": "vote"}):
        with pytest.raises(ValueError):
            DeltaConfig(**bad)


def test_queries_for_each_modification():
    image = np.random.default_rng(0).random((8, 8, 1), dtype=np.float32)
    key = jax.random.key(0)
    norm = Normalization.of(np.array([0.5]), np.array([0.25]))
    both = make_queries(key, image, 3, 10, DeltaConfig(n_b=20), norm)
    assert both.images.shape == (20, 8, 8, 1) and not np.any(both.labels == 3)
    assert set(both.transforms) <= set(DeltaConfig().transforms) and len(set(both.transforms)) > 2
    labels_only = make_queries(key, image, 3, 10, DeltaConfig(n_b=20, modify="label"), norm)
    np.testing.assert_array_equal(labels_only.images, np.repeat(image[None], 20, 0))
    assert not np.any(labels_only.labels == 3)
    images_only = make_queries(key, image, 3, 10, DeltaConfig(n_b=20, modify="image"), norm)
    assert np.all(images_only.labels == 3)
    np.testing.assert_array_equal(images_only.images, both.images)  # same key, same transformations
    again = make_queries(key, image, 3, 10, DeltaConfig(n_b=20), norm)
    np.testing.assert_array_equal(again.images, both.images)
    np.testing.assert_array_equal(again.labels, both.labels)


def _largest_change(queries, image):
    return np.abs(queries.images - image[None]).max(axis=(1, 2, 3))


@pytest.mark.parametrize("space", ["pixel", "normalized"])
def test_image_only_queries_on_grayscale_all_differ_from_the_original(space):
    """An unchanged image-only query has ΔInfl ≈ 0, which never counts as a collapse at τ = 0."""
    image = np.random.default_rng(1).random((8, 8, 1), dtype=np.float32)
    config = DeltaConfig(modify="image", space=space)
    norm = Normalization.of(np.array([0.5]), np.array([0.25]))
    assert "rotation" in config.transforms
    for seed in range(3):
        queries = make_queries(jax.random.key(seed), image, 3, 10, config, norm)
        assert queries.images.shape == (50, 8, 8, 1) and np.all(queries.labels == 3)
        assert "color_switch" not in queries.transforms
        assert _largest_change(queries, image).min() > 1e-3, queries.transforms


def test_queries_redraw_transformations_that_leave_the_image_unchanged():
    # A mirror-symmetric image: every flip is an identity, so those rows must be redrawn (deterministically).
    half = np.random.default_rng(2).random((8, 4, 1), dtype=np.float32)
    image = np.concatenate([half, half[:, ::-1]], axis=1)
    norm = Normalization.of(np.array([0.5]), np.array([0.25]))
    config = DeltaConfig(n_b=20, modify="image", transforms=("flip", "invert"))
    queries = make_queries(jax.random.key(0), image, 3, 10, config, norm)
    assert queries.transforms == ("invert",) * 20
    np.testing.assert_allclose(queries.images, np.repeat(1 - image[None], 20, 0), atol=1e-6)
    again = make_queries(jax.random.key(0), image, 3, 10, config, norm)
    np.testing.assert_array_equal(again.images, queries.images)
    with pytest.raises(ValueError, match="unchanged"):
        make_queries(jax.random.key(0), image, 3, 10, config.replace(transforms=("flip",)), norm)


def test_robust_threshold_ignores_a_few_outliers():
    scores = np.concatenate([np.random.default_rng(0).normal(0, 1, 1000), np.full(20, 100.0)])
    cut = robust_threshold(scores, k=5.0)
    assert 4.0 < cut < 6.5
    flagged, _ = threshold_flags(scores, None)
    assert set(range(1000, 1020)) <= set(flagged.tolist()) and len(flagged) < 25
    with pytest.raises(ValueError, match="NaN"):
        threshold_flags(np.array([0.0, np.nan]), 1.0)


def test_delta_influence_finds_badnet_poisons(tiny_run):
    """On digits with a 2×2 BadNet patch, Δ-Influence flags ≥ 90 % of poisons at ≥ 5× the base rate."""
    victim, factors, poisons = tiny_run.victim, tiny_run.factors, tiny_run.poisoning.poison_indices
    config = DeltaConfig()
    result = delta_influence(victim.model, victim.train, victim.test_images, victim.target, factors, config,
                             tiny_run.score_config, progress=False)  # fmt: skip
    n = len(victim.train)
    metrics = detection_metrics(result.flagged, poisons, n, result.scores)
    base_rate = poisons.size / n
    assert metrics["tpr"] >= 0.9, metrics
    assert metrics["precision"] >= 5 * base_rate, metrics
    assert result.delta.shape == (1, config.n_b, n) and result.counts.shape == (1, n)
    # The poisons support the poisoned test point, and that support collapses.
    assert np.median(result.old[0][poisons]) > 10 * abs(np.median(result.old[0]))
    assert np.mean(result.delta[0][:, poisons] < 0) > 0.95


def test_delta_influence_warns_about_a_test_point_the_backdoor_missed(tiny_run):
    victim = tiny_run.victim
    clean = tiny_run.splits.test
    image = clean.images[np.flatnonzero(clean.labels != victim.target)[0]]
    with pytest.warns(UserWarning, match="not the target"):
        delta_influence(victim.model, victim.train, image, victim.target, tiny_run.factors,
                        DeltaConfig(n_b=2, n_tol=0), tiny_run.score_config, progress=False)  # fmt: skip


def test_delta_influence_rejects_bad_input(tiny_run):
    victim = tiny_run.victim
    with pytest.raises(ValueError, match="training image shape"):
        delta_influence(victim.model, victim.train, np.zeros((4, 4, 1), np.float32), victim.target, None)
    with pytest.raises(ValueError, match="empty"):
        delta_influence(victim.model, victim.train.subset(np.arange(0)), victim.test_images, victim.target, None)


def test_several_test_points_are_scored_together_and_aggregated(tiny_run):
    victim, poisoning, test = tiny_run.victim, tiny_run.poisoning, tiny_run.splits.test
    victims = np.flatnonzero(test.labels != victim.target)[:40]
    triggered = np.clip(np.asarray(poisoning.trigger.apply(test.images[victims])), 0, 1)
    logits = victim.model(triggered)
    points = triggered[np.flatnonzero(np.asarray(logits).argmax(-1) == victim.target)[:2]]
    assert len(points) == 2
    config = DeltaConfig(n_b=10, n_tol=1, aggregate="union")
    union = delta_influence(victim.model, victim.train, points, victim.target, tiny_run.factors, config,
                            tiny_run.score_config, progress=False)  # fmt: skip
    both = config.replace(aggregate="intersection")
    inter = delta_influence(victim.model, victim.train, points, victim.target, tiny_run.factors, both,
                            tiny_run.score_config, progress=False)  # fmt: skip
    assert union.delta.shape == (2, 10, len(victim.train)) and len(union.queries) == 2
    per_point = [set(np.flatnonzero(c >= 10 - 1).tolist()) for c in union.counts]
    assert set(union.flagged.tolist()) == per_point[0] | per_point[1]
    assert set(inter.flagged.tolist()) == per_point[0] & per_point[1]
    np.testing.assert_allclose(inter.delta, union.delta)  # same keys: the same queries either way


def test_threshold_baselines_intersect_several_test_points(tiny_run):
    from jaxpoison.detection.threshold import ekfac_threshold
    from jaxpoison.experiments.victim import pick_test_points

    victim = tiny_run.victim
    _, points = pick_test_points(victim.model, tiny_run.poisoning, None, tiny_run.splits.test, 2)
    assert points.shape == (2, *victim.train.image_shape)
    each = [ekfac_threshold(victim.model, victim.train, p, victim.target, tiny_run.factors, tiny_run.score_config,
                            None, progress=False) for p in points]  # fmt: skip
    both = ekfac_threshold(victim.model, victim.train, points, victim.target, tiny_run.factors, tiny_run.score_config,
                           None, progress=False)  # fmt: skip
    assert set(both.flagged.tolist()) == set(each[0].flagged.tolist()) & set(each[1].flagged.tolist())
    assert both.thresholds == pytest.approx(each[0].thresholds + each[1].thresholds, rel=1e-5)
    # ROC score: a point is above every cut exactly when its smallest margin is positive
    np.testing.assert_array_equal(np.flatnonzero(both.scores > 0), both.flagged)
    with pytest.raises(ValueError, match=r"lower detection\.test_points"):
        pick_test_points(victim.model, tiny_run.poisoning, None, tiny_run.splits.test, 10_000)
