"""Feature-space detection baselines (spectral signatures, activation clustering) and detection metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from jaxpoison.detection.activation_clustering import activation_clustering
from jaxpoison.detection.features import penultimate_features
from jaxpoison.detection.metrics import auroc, detection_metrics, mask_from_indices, roc_curve
from jaxpoison.detection.spectral import spectral_signatures, spectral_signatures_reference
from tests.conftest import make_dataset

N_PER_CLASS, DIM, N_POISONS = 200, 16, 20


@pytest.fixture(scope="module")
def planted():
    """3 Gaussian classes of 200 points in 16-D; 20 points of class 1 shifted 10 sigma along one direction."""
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(N_PER_CLASS, DIM)) + 5 * rng.normal(size=DIM) for _ in range(3)])
    labels = np.repeat(np.arange(3), N_PER_CLASS)
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    poisons = np.sort(N_PER_CLASS + rng.choice(N_PER_CLASS, N_POISONS, replace=False))
    feats[poisons] += 10 * direction
    return feats.astype(np.float32), labels, poisons


# --- spectral signatures ---------------------------------------------------------------------


def test_spectral_finds_planted_poisons(planted):
    feats, labels, poisons = planted
    result = spectral_signatures(feats, labels, poison_fraction=N_POISONS / N_PER_CLASS)
    metrics = detection_metrics(result.flagged, poisons, len(labels), scores=result.scores)
    assert metrics["tpr"] >= 0.9
    assert metrics["auroc"] > 0.95
    assert result.flagged.dtype == np.int64
    assert np.all(np.diff(result.flagged) > 0)
    # Normalised scores have mean 1 within every class.
    for c in range(3):
        assert result.scores[labels == c].mean() == pytest.approx(1.0)


def test_spectral_removal_count_per_class():
    rng = np.random.default_rng(1)
    sizes = {0: 50, 1: 73, 2: 120, 3: 1}
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    rng.shuffle(labels)
    feats = rng.normal(size=(labels.size, 5))
    eps = 0.1
    result = spectral_signatures(feats, labels, eps)
    expected = {0: round(1.5 * eps * 50), 1: round(1.5 * eps * 73), 2: round(1.5 * eps * 120), 3: 0}
    assert expected == {0: 8, 1: 11, 2: 18, 3: 0}
    assert result.removed_per_class == expected
    for c, k in expected.items():
        assert np.isin(result.flagged, np.flatnonzero(labels == c)).sum() == k
    # The singleton class is skipped: score 0.
    assert result.scores[labels == 3] == pytest.approx(0.0)
    # Flags are the top-k of each class's raw score.
    for c in (0, 1, 2):
        idx = np.flatnonzero(labels == c)
        flagged_c = np.intersect1d(result.flagged, idx)
        assert result.raw_scores[flagged_c].min() >= result.raw_scores[np.setdiff1d(idx, flagged_c)].max()


def test_spectral_removal_factor_scales_count():
    rng = np.random.default_rng(2)
    feats, labels = rng.normal(size=(100, 4)), np.zeros(100, int)
    assert spectral_signatures(feats, labels, 0.1, removal_factor=1.0).flagged.size == 10
    assert spectral_signatures(feats, labels, 0.1, removal_factor=3.0).flagged.size == 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poison_fraction": 0.0}, "poison_fraction"),
        ({"poison_fraction": 1.0}, "poison_fraction"),
        ({"poison_fraction": -0.1}, "poison_fraction"),
        ({"poison_fraction": 0.1, "removal_factor": 0.0}, "removal_factor"),
    ],
)
def test_spectral_rejects_bad_arguments(kwargs, match):
    feats, labels = np.ones((10, 3)), np.zeros(10, int)
    with pytest.raises(ValueError, match=match):
        spectral_signatures(feats, labels, **kwargs)


def test_spectral_rejects_bad_features():
    labels = np.zeros(10, int)
    with pytest.raises(ValueError, match="2-D"):
        spectral_signatures(np.ones(10), labels, 0.1)
    with pytest.raises(ValueError, match="finite"):
        spectral_signatures(np.full((10, 3), np.nan), labels, 0.1)
    with pytest.raises(ValueError, match="one label per"):
        spectral_signatures(np.ones((10, 3)), labels[:9], 0.1)


def test_spectral_reference_rule_by_hand():
    # Three mutually orthogonal columns with norms 14.6.., 9 and 3.64..: these are the singular
    # values, and the left singular vectors are the normalised columns. With thresholds 7/7 the
    # third direction is dropped, so a point's score is |a_i| + |c_i| in quadrature (b excluded).
    a = np.array([10.0, -8.0, 6.9, 0.0, 0.0])
    b = np.array([-2.07, 0.0, 3.0, 0.0, 0.0])  # a . b = 0, |b| = 3.64 < 7
    c = np.array([0.0, 0.0, 0.0, 9.0, 0.0])
    feats = np.stack([a, c, b, np.zeros(5)], axis=1)
    s = np.linalg.svd(feats, compute_uv=False)
    np.testing.assert_allclose(s[:3], [np.linalg.norm(a), 9.0, np.linalg.norm(b)], rtol=1e-12)
    result = spectral_signatures_reference(feats)
    np.testing.assert_allclose(result.scores, [10.0, 8.0, 6.9, 9.0, 0.0], atol=1e-9)
    # Point 2 has full norm sqrt(6.9^2 + 3^2) = 7.5 > 7 but only 6.9 in the kept subspace.
    assert result.flagged.tolist() == [0, 1, 3]
    assert result.removed_per_class == {}
    # Lowering the singular threshold below |b| keeps the third direction and flags point 2 too.
    assert spectral_signatures_reference(feats, singular_threshold=3.0).flagged.tolist() == [0, 1, 2, 3]
    # A norm threshold above every score flags nothing.
    assert spectral_signatures_reference(feats, norm_threshold=10.0).flagged.size == 0


# --- activation clustering -------------------------------------------------------------------


def test_activation_clustering_finds_planted_cluster(planted):
    feats, labels, poisons = planted
    result = activation_clustering(feats, labels)
    metrics = detection_metrics(result.flagged, poisons, len(labels), scores=result.scores)
    assert metrics["tpr"] >= 0.9
    # The smaller cluster of class 1 is exactly the planted set.
    idx1 = np.flatnonzero(labels == 1)
    sizes = np.bincount(result.clusters[idx1], minlength=2)
    smaller = idx1[result.clusters[idx1] == np.argmin(sizes)]
    np.testing.assert_array_equal(smaller, poisons)
    assert result.relative_size[1] == pytest.approx(N_POISONS / N_PER_CLASS)
    np.testing.assert_allclose(result.scores[poisons], 1 - N_POISONS / N_PER_CLASS)
    # The reference rule flags the smaller cluster of every class.
    for c in range(3):
        assert np.isin(result.flagged, np.flatnonzero(labels == c)).any()
    # The planted class separates far better than the Gaussian ones.
    assert result.silhouette[1] > 0.6
    assert max(result.silhouette[0], result.silhouette[2]) < 0.5


def test_activation_clustering_silhouette_rule(planted):
    feats, labels, poisons = planted
    result = activation_clustering(feats, labels, min_silhouette=0.5)
    np.testing.assert_array_equal(result.flagged, poisons)
    assert activation_clustering(feats, labels, min_silhouette=0.99).flagged.size == 0


def test_activation_clustering_small_classes():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(8, 2))
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 2])
    result = activation_clustering(feats, labels, n_components=5)
    assert 0 not in result.relative_size and 0 not in result.silhouette
    assert result.scores[0] == 0.0 and result.clusters[0] == -1
    assert 0 not in result.flagged
    assert result.relative_size[1] == 0.5  # two points, one per cluster
    assert 1 not in result.silhouette  # undefined for 2 points
    assert 2 in result.silhouette
    with pytest.raises(ValueError, match="n_components"):
        activation_clustering(feats, labels, n_components=0)


# --- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_roc_curve_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 300
    scores = rng.integers(0, 12, n).astype(float)  # many ties
    is_poison = rng.random(n) < 0.2 + 0.01 * scores
    assert auroc(scores, is_poison) == pytest.approx(roc_auc_score(is_poison, scores), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(scores, is_poison)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(is_poison, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds[1:], sk_thr[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, is_poison))


def test_roc_curve_shape():
    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.normal(size=50), [np.inf, -np.inf]])
    is_poison = rng.random(52) < 0.3
    is_poison[[0, 1]] = [True, False]
    fpr, tpr, thresholds = roc_curve(scores, is_poison)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds[1:]) < 0)
    assert fpr.size == np.unique(scores).size + 1


def test_auroc_extremes():
    is_poison = np.array([False] * 5 + [True] * 3)
    assert auroc(np.arange(8.0), is_poison) == 1.0
    assert auroc(-np.arange(8.0), is_poison) == 0.0
    assert auroc(np.full(8, 3.0), is_poison) == 0.5
    with pytest.raises(ValueError, match="both"):
        auroc(np.arange(8.0), np.zeros(8, bool))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.0, np.nan]), np.array([True, False]))


def test_detection_metrics_by_hand():
    scores = np.array([0, 9, 8, 7, 1, 0, 0, 2, 0, 0], float)
    m = detection_metrics([2, 3, 7], [1, 2, 3, 4], 10, scores=scores, seconds=1.5)
    assert m["tpr"] == 0.5
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 6)
    assert (m["n_flagged"], m["n_poisons"], m["n_true_positives"], m["n_false_positives"]) == (3, 4, 2, 1)
    # Poisons score 9, 8, 7, 1; clean 0,0,2,0,0,0: poison 1 beats five clean points and loses to one.
    assert m["auroc"] == pytest.approx((6 + 6 + 6 + 5) / 24)
    assert m["seconds"] == 1.5
    nothing = detection_metrics([], [1, 2], 10)
    assert nothing["precision"] == 0.0 and nothing["tpr"] == 0.0 and nothing["fpr"] == 0.0
    assert nothing["auroc"] is None and nothing["seconds"] is None
    no_poisons = detection_metrics([1], [], 10, scores=scores)
    assert no_poisons["tpr"] is None and no_poisons["auroc"] is None and no_poisons["fpr"] == 0.1


@pytest.mark.parametrize(
    ("flagged", "poisons", "scores", "match"),
    [
        ([0, 10], [1], None, "flagged must lie"),
        ([-1], [1], None, "flagged must lie"),
        ([0], [12], None, "poison_indices must lie"),
        ([2, 2], [1], None, "repeated"),
        ([2], [1, 1], None, "repeated"),
        ([2], [1], np.zeros(9), "shape"),
        ([2], [1], np.array([np.nan] + [0.0] * 9), "NaN"),
        (np.zeros(10, bool), [1], None, "boolean mask"),
    ],
)
def test_detection_metrics_rejects_bad_input(flagged, poisons, scores, match):
    with pytest.raises(ValueError, match=match):
        detection_metrics(flagged, poisons, 10, scores=scores)


def test_mask_from_indices():
    np.testing.assert_array_equal(mask_from_indices([0, 3, 3], 5), [True, False, False, True, False])
    assert mask_from_indices([], 3).tolist() == [False] * 3
    with pytest.raises(ValueError, match="lie in"):
        mask_from_indices([5], 5)


# --- features --------------------------------------------------------------------------------


def test_penultimate_features_match_unbatched():
    from jaxpoison.data import normalize
    from jaxpoison.models import create_model, to_functional

    dataset = make_dataset(n=70)
    model = to_functional(create_model("cnn", (8, 8, 1), 4, seed=0), dataset.mean, dataset.std)
    feats = penultimate_features(model, dataset, batch_size=32, progress=False)  # 32 + 32 + 6 padded
    # the raw network on explicitly normalised images: the model must normalise at its door
    normalized = normalize(dataset.images, dataset.mean, dataset.std)
    direct = np.asarray(model.structure.features(model.params, model.state, normalized))
    assert feats.shape == direct.shape and feats.shape[0] == 70
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        penultimate_features(model, dataset.subset(np.zeros(0, np.int64)), progress=False)
