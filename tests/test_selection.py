"""Backdoor sample selection: the pure pieces exactly, LiSSA influence against the dense
solve, and every selector's contract (sorted unique in-pool indices, right size, seeded)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from jaxpoison.attacks import (
    BlendedTrigger,
    PoisonConfig,
    blended,
    candidate_pool,
    choose_poisons,
    poison_dataset,
    square_patch,
)
from jaxpoison.data import Dataset, Provenance, load_dataset, normalize
from jaxpoison.influence import (
    LissaConfig,
    batch_loss,
    cross_entropy,
    dense_hessian,
    flatten,
    flatten_batch,
    full_ihvp,
    per_example_grads,
    solve_dense,
)
from jaxpoison.models import create_model, to_functional
from jaxpoison.selection import (
    FUSConfig,
    IFSConfig,
    RDConfig,
    SelectionError,
    candidate_influence,
    class_prototypes,
    count_forgetting_events,
    dct_matrix,
    fair_quota,
    fair_select,
    fus_selection,
    group_split,
    hfe_scores,
    hfe_selection,
    ifs_selection,
    lissa_inverse_hvp,
    mean_loss_gradient,
    random_selection,
    rd_scores,
    rd_selection,
    representation_distance,
    triggered,
)
from jaxpoison.selection import ifs as ifs_module
from tests.conftest import make_dataset

TINY = {"width": 4, "hidden": 16}


def images_dataset(images: np.ndarray, labels, num_classes: int = 2) -> Dataset:
    return Dataset(
        images=np.asarray(images, np.float32),
        labels=np.asarray(labels, np.int32),
        class_names=tuple(map(str, range(num_classes))),
        mean=np.full(images.shape[-1], 0.5, np.float32),
        std=np.full(images.shape[-1], 0.25, np.float32),
        provenance=Provenance("synthetic", "hand-made", "train"),
    )


# --------------------------------------------------------------------------- IFS: pure pieces


def test_prototypes_and_group_split_on_hand_made_features():
    # Class 0 on the x axis around 0 (distances 3, 1, 0, 1, 3); class 1 around (10, 10)
    # (distances 2, 1, 2, 1). The classes are interleaved to exercise the indexing.
    features = np.array([[-3, 0], [10, 12], [-1, 0], [11, 10], [0, 0], [10, 8], [1, 0], [9, 10], [3, 0]], float)
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0])
    protos = class_prototypes(features, labels)
    assert set(protos) == {0, 1}
    np.testing.assert_array_equal(protos[0], [0.0, 0.0])
    np.testing.assert_array_equal(protos[1], [10.0, 10.0])

    # η = 2: class 0 (5 points) splits 3 + 2, the closer group larger; class 1 splits 2 + 2.
    np.testing.assert_array_equal(group_split(features, labels, 2), [2, 2, 1, 1, 1, 2, 1, 1, 2])
    # η = 3: class 0 splits 2 + 2 + 1 by rank: (0), then the tie (-1) before (1) by position,
    # then (-3) before (3); class 1 splits 2 + 1 + 1.
    np.testing.assert_array_equal(group_split(features, labels, 3), [2, 2, 1, 1, 1, 3, 2, 1, 3])
    # η = 1: everything is group 1.
    np.testing.assert_array_equal(group_split(features, labels, 1), np.ones(9))


@pytest.mark.parametrize("eta", [0, -2, 1.5, True])
def test_eta_below_one_or_not_an_integer_raises(eta):
    features, labels = np.zeros((4, 2)), np.array([0, 0, 1, 1])
    with pytest.raises(SelectionError, match="eta"):
        group_split(features, labels, eta)
    with pytest.raises(SelectionError, match="eta"):
        IFSConfig(eta=eta)


def test_fair_quota_splits_equally_and_gives_the_remainder_to_the_lowest_classes():
    assert fair_quota(12, [1, 2, 3]) == {1: 4, 2: 4, 3: 4}
    assert fair_quota(11, [3, 1, 2]) == {1: 4, 2: 4, 3: 3}
    assert fair_quota(2, [5, 1, 2]) == {1: 1, 2: 1, 5: 0}
    assert sum(fair_quota(97, range(1, 10)).values()) == 97
    with pytest.raises(SelectionError, match="distinct"):
        fair_quota(3, [1, 1])


def test_fair_select_takes_each_classes_top_quota_and_reports_thresholds():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.5, 0.6])
    labels = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])
    positions, thresholds = fair_select(scores, labels, {1: 2, 2: 2, 3: 1})
    np.testing.assert_array_equal(positions, [0, 2, 3, 5, 8])  # global top-5 would take 0, 5, 3, 8 and 2 or 7
    assert thresholds == {1: 0.5, 2: 0.7, 3: 0.6}
    counts = np.bincount(labels[positions])
    assert counts[1] == 2 and counts[2] == 2 and counts[3] == 1
    # A tie at the threshold goes to the lower position.
    positions, _ = fair_select(np.array([0.5, 0.5, 0.1]), np.array([1, 1, 1]), {1: 1})
    np.testing.assert_array_equal(positions, [0])


def test_fair_select_refuses_a_group_smaller_than_its_quota():
    with pytest.raises(SelectionError, match=r"class 2 has 2 candidates in group 1 but its quota is 3"):
        fair_select(np.arange(5.0), np.array([1, 1, 1, 2, 2]), {1: 3, 2: 3})


def test_ifs_refuses_a_too_small_group_one_before_training():
    data = make_dataset(n=120, shape=(8, 8, 1), num_classes=4)
    sizes = np.bincount(data.labels, minlength=4)
    k = round(0.3 * 120)
    quota = fair_quota(k, [1, 2, 3])
    eta = 4
    short = [c for c in (1, 2, 3) if math.ceil(sizes[c] / eta) < quota[c]]
    assert short, "the example must be infeasible"
    c = short[0]
    message = rf"class {c} has {math.ceil(sizes[c] / eta)} candidates in group 1 .*eta=4.* needs {quota[c]} poisons"
    with pytest.raises(SelectionError, match=message):
        ifs_selection(data, blended(data.image_shape, 0.2), 0, 0.3, IFSConfig(eta=eta), progress=False)


# --------------------------------------------------------------------------- FUS, RD, HFE: pure pieces


def test_forgetting_events_count_one_to_zero_transitions():
    sequences = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]])
    expected = [2, 0, 1, 0, 1, 0]
    np.testing.assert_array_equal(count_forgetting_events(sequences.T), expected)  # [epochs, k]
    np.testing.assert_array_equal(count_forgetting_events(sequences.T.astype(bool)), expected)
    with pytest.raises(SelectionError, match="2-D"):
        count_forgetting_events(np.array([1, 0, 1]))
    with pytest.raises(SelectionError, match="booleans"):
        count_forgetting_events(np.array([[2, 0], [1, 0]]))


def test_fus_needs_two_epochs_to_see_a_forgetting_event():
    with pytest.raises(SelectionError, match="epochs ≥ 2"):
        FUSConfig(epochs=1)


def test_representation_distance_is_exact_on_hand_made_logits():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    got = representation_distance(logits, 0)
    np.testing.assert_allclose(got, [math.sqrt(0.5), math.sqrt(0.125), math.sqrt(0.125)], rtol=1e-12)
    np.testing.assert_allclose(representation_distance(logits[1:2], 1), [math.sqrt(2 * 0.75**2)], rtol=1e-12)
    with pytest.raises(SelectionError, match="target"):
        representation_distance(logits, 2)


def test_rd_scores_use_the_models_softmax():
    # A logistic regression with zero weights and bias (log 2, 0, 0): softmax (1/2, 1/4, 1/4) for every input.
    model = to_functional(create_model("logreg", (4, 4, 1), 3))
    params = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.array([math.log(2.0), 0.0, 0.0]) if "bias" in jax.tree_util.keystr(path)
        else jnp.zeros_like(leaf), model.params)  # fmt: skip
    data = images_dataset(np.random.default_rng(0).random((5, 4, 4, 1)), np.zeros(5), 3)
    got = rd_scores(model.replace(params=params), data, target=2)
    np.testing.assert_allclose(got, np.full(5, math.sqrt(0.5**2 + 0.25**2 + 0.75**2)), rtol=1e-6)


def test_dct_matrix_is_orthonormal():
    for n in (4, 7, 8):
        d = dct_matrix(n)
        np.testing.assert_allclose(d @ d.T, np.eye(n), atol=1e-12)


def test_hfe_is_exact_on_dct_basis_images_and_ranks_a_checkerboard_above_a_gradient():
    d = dct_matrix(8)
    low = np.outer(d[0], d[1])[..., None]  # u² + v² = 1 ≤ r² = 4
    high = np.outer(d[5], d[6])[..., None]
    np.testing.assert_allclose(hfe_scores(np.stack([low, high])), [0.0, 1.0], atol=1e-6)

    checker = (np.add.outer(np.arange(8), np.arange(8)) % 2).astype(np.float32)[..., None]
    gradient = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))[..., None]
    rng = np.random.default_rng(0)
    batch = np.stack([checker, gradient, np.zeros((8, 8, 1)), *rng.random((3, 8, 8, 1))])
    scores = hfe_scores(batch)
    assert scores[0] > 0.4 and scores[1] < 0.05 and scores[0] > scores[3:].max() > scores[1]
    assert scores[2] == 0.0  # an image without energy
    assert np.all((scores >= 0) & (scores <= 1))
    # A wider low-frequency disc can only lower the share.
    assert np.all(hfe_scores(batch, radius=4) <= scores + 1e-7)


def test_hfe_selection_prefers_high_frequency_candidates():
    checker = (np.add.outer(np.arange(8), np.arange(8)) % 2).astype(np.float32)[..., None]
    gradient = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))[..., None]
    images = np.stack([gradient, checker, gradient, checker, gradient, checker, gradient, gradient, checker, gradient])
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])  # target 0: the last four are not candidates
    data = images_dataset(images, labels)
    identity = BlendedTrigger(np.zeros((8, 8, 1)), 0.0)
    sel = hfe_selection(data, identity, target=0, rate=0.3)
    np.testing.assert_array_equal(sel.indices, [1, 3, 5])
    np.testing.assert_allclose(sel.scores, hfe_scores(checker)[0], rtol=1e-6)
    np.testing.assert_array_equal(sel.info["candidates"], [0, 1, 2, 3, 4, 5])


# --------------------------------------------------------------------------- IFS influence vs. the dense solve


def test_lissa_candidate_influence_matches_exact_influence_on_logistic_regression():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        shape, classes = (4, 4, 1), 3
        train_set = images_dataset(rng.random((60, *shape)), rng.integers(0, classes, 60), classes)
        val = images_dataset(rng.random((20, *shape)), np.zeros(20), classes)  # triggered, labelled target 0
        cands = images_dataset(rng.random((30, *shape)), np.zeros(30), classes)
        model = to_functional(create_model("logreg", shape, classes, seed=0), train_set.mean, train_set.std)
        model = model.replace(params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.params))
        bound = lambda p, x: model.structure.apply(p, model.state, x)  # the raw network, on normalised images
        norm = lambda d: normalize(jnp.asarray(d.images), d.mean, d.std)

        v = mean_loss_gradient(model, val, batch_size=8)  # padded batches: 8 + 8 + 4
        want_v = jax.grad(batch_loss(bound, cross_entropy, "mean"))(model.params, norm(val), val.labels)
        np.testing.assert_allclose(flatten(v)[0], flatten(want_v)[0], rtol=1e-10)

        damping = 0.1
        f = batch_loss(bound, cross_entropy, "mean")
        x, y = norm(train_set), jnp.asarray(train_set.labels)
        hessian = jax.jit(lambda p: dense_hessian(f, p, x, y))(model.params)
        s_exact = solve_dense(hessian, v, damping)
        grads = jax.jit(lambda p: flatten_batch(per_example_grads(bound, cross_entropy, p, norm(cands),
                                                                  cands.labels)))(model.params)  # fmt: skip
        exact = np.asarray(grads @ flatten(s_exact)[0])

        # The batched JVP pass is exactly the per-example gradient dot product, compiled once.
        got = candidate_influence(model, s_exact, cands, batch_size=8)
        np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-12)
        compiled = full_ihvp._influence_batch._cache_size()
        candidate_influence(model, s_exact, cands, batch_size=8)
        assert full_ihvp._influence_batch._cache_size() == compiled

        # One minibatch LiSSA run ranks the candidates like the dense inverse.
        top = float(jnp.linalg.eigvalsh(hessian)[-1])
        config = LissaConfig(damping=damping, scale=1.5 * (top + damping), depth=1000, batch_size=30)
        s, info = lissa_inverse_hvp(model, train_set, v, config, jax.random.key(0))
        assert bool(info.finite)
        approx = candidate_influence(model, s, cands)
        assert spearmanr(approx, exact).statistic >= 0.95
        cosine = np.dot(flatten(s)[0], flatten(s_exact)[0]) / (
            np.linalg.norm(flatten(s)[0]) * np.linalg.norm(flatten(s_exact)[0]))  # fmt: skip
        assert cosine > 0.95


# --------------------------------------------------------------------------- the selectors' contract


def tiny_data() -> Dataset:
    return make_dataset(n=120, shape=(8, 8, 1), num_classes=4)


def check_contract(sel, data, target, rate):
    pool = candidate_pool(data, target, None)
    k = round(rate * len(data))
    assert sel.indices.dtype == np.int64 and sel.indices.shape == (k,)
    assert np.all(np.diff(sel.indices) > 0)  # sorted and unique
    assert np.isin(sel.indices, pool).all()
    assert sel.scores.shape == (k,)
    assert sel.info["k"] == k


def test_random_selection_contract_and_agreement_with_choose_poisons():
    data = tiny_data()
    sel = random_selection(data, 0, 0.1, seed=3)
    check_contract(sel, data, 0, 0.1)
    assert np.isnan(sel.scores).all()
    np.testing.assert_array_equal(sel.indices, choose_poisons(data, PoisonConfig(target=0, rate=0.1, seed=3)))
    np.testing.assert_array_equal(sel.indices, random_selection(data, 0, 0.1, seed=3).indices)
    assert not np.array_equal(sel.indices, random_selection(data, 0, 0.1, seed=4).indices)


@pytest.mark.parametrize(
    ("rate", "target", "message"),
    [(0.001, 0, "selects 0 poisons"), (0.9, 0, "only .* outside the target class"), (0.0, 0, r"rate must"),
     (1.5, 0, r"rate must"), (0.1, 7, "target 7 is not a class"), (0.1, -1, "target -1 is not a class")],
)  # fmt: skip
def test_bad_rates_and_targets_are_refused(rate, target, message):
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)
    with pytest.raises(SelectionError, match=message):
        random_selection(data, target, rate)
    with pytest.raises(SelectionError, match=message):
        hfe_selection(data, trigger, target, rate)
    with pytest.raises(SelectionError, match=message):
        fus_selection(data, trigger, target, rate, FUSConfig(rounds=1, epochs=2, model_kwargs=TINY), progress=False)


def test_fus_contract_and_determinism():
    data = tiny_data()
    trigger = square_patch(data.image_shape, size=2)
    config = FUSConfig(rounds=2, epochs=2, model="cnn", model_kwargs=TINY, batch_size=40)
    sel = fus_selection(data, trigger, 0, 0.1, config, seed=1, progress=False)
    check_contract(sel, data, 0, 0.1)
    k, kept = 12, int(12 * config.keep_fraction)
    assert np.isnan(sel.scores).sum() == k - kept  # the final refill has no score
    finite = sel.scores[~np.isnan(sel.scores)]
    assert np.all(finite >= 0) and np.all(finite <= config.epochs - 1)
    assert [r["round"] for r in sel.info["rounds"]] == [1, 2]
    again = fus_selection(data, trigger, 0, 0.1, config, seed=1, progress=False)
    np.testing.assert_array_equal(sel.indices, again.indices)
    np.testing.assert_array_equal(sel.scores, again.scores)
    # The reference's append mode trains on N + k examples and obeys the same contract.
    appended = fus_selection(data, trigger, 0, 0.1, FUSConfig(rounds=1, epochs=2, mode="append", model_kwargs=TINY,
                                                              batch_size=44), seed=1, progress=False)  # fmt: skip
    check_contract(appended, data, 0, 0.1)


def test_fus_keeps_the_most_forgotten_poisons(monkeypatch):
    # Replace the measured events by a known function of the poison's training index.
    import jaxpoison.selection.forgetting as fus

    data = tiny_data()
    events_of = lambda idx: np.asarray(idx) % 5
    seen = {}

    def fake_poison_dataset(dataset, trigger, config):
        out = poison_dataset(dataset, trigger, config)
        seen["sources"] = out.source_indices
        return out

    monkeypatch.setattr(fus, "poison_dataset", fake_poison_dataset)
    monkeypatch.setattr(fus, "count_forgetting_events", lambda correct: events_of(seen["sources"]))
    config = FUSConfig(rounds=1, epochs=2, model_kwargs=TINY, batch_size=40)
    sel = fus_selection(data, square_patch(data.image_shape, size=2), 0, 0.1, config, seed=5, progress=False)
    kept = sel.indices[~np.isnan(sel.scores)]
    dropped = np.setdiff1d(sel.info["initial"], kept)
    assert kept.size == 6 and np.isin(kept, sel.info["initial"]).all()
    np.testing.assert_array_equal(sel.scores[~np.isnan(sel.scores)], events_of(kept))
    assert events_of(kept).min() >= events_of(dropped).max()


def test_rd_drops_the_lowest_distance_poisons(monkeypatch):
    # Score each poison by its triggered image's mean: a known, monotone function of the clean image.
    import jaxpoison.selection.representation as rd

    data = tiny_data()
    monkeypatch.setattr(rd, "rd_scores", lambda model, images, target: images.images.mean(axis=(1, 2, 3)))
    config = RDConfig(rounds=1, score_epochs=1, model_kwargs=TINY, batch_size=40)
    sel = rd_selection(data, blended(data.image_shape, 0.2), 0, 0.1, config, seed=5, progress=False)
    survivors = sel.indices[~np.isnan(sel.scores)]
    dropped = np.setdiff1d(sel.info["initial"], survivors)
    assert dropped.size == int(12 * 0.5 + 0.5) and np.isin(survivors, sel.info["initial"]).all()
    assert not np.isin(dropped, sel.indices).any()  # not redrawn in the round that dropped them
    means = data.images.mean(axis=(1, 2, 3))
    assert means[survivors].min() >= means[dropped].max()


def test_rd_contract_and_determinism():
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)
    config = RDConfig(rounds=2, score_epochs=1, model="cnn", model_kwargs=TINY, batch_size=40)
    sel = rd_selection(data, trigger, 0, 0.1, config, seed=2, progress=False)
    check_contract(sel, data, 0, 0.1)
    last_replaced = int(12 * 0.5 * 0.93 + 0.5)
    assert sel.info["rounds"][-1]["replaced"] == last_replaced
    assert np.isnan(sel.scores).sum() == last_replaced
    finite = sel.scores[~np.isnan(sel.scores)]
    assert np.all((finite >= 0) & (finite <= math.sqrt(2)))  # ‖p − e_t‖ ≤ √2 for a probability vector
    np.testing.assert_array_equal(sel.indices, rd_selection(data, trigger, 0, 0.1, config, seed=2,
                                                            progress=False).indices)  # fmt: skip


def test_ifs_contract_fairness_and_determinism():
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)
    lissa = LissaConfig(damping=0.01, scale=25.0, depth=20, batch_size=40)
    config = IFSConfig(eta=2, surrogate_epochs=1, model="mlp", model_kwargs={"hidden": (16,)}, batch_size=40,
                       lissa=lissa, validation_size=24, influence_batch_size=32)  # fmt: skip
    sel = ifs_selection(data, trigger, 0, 0.1, config, seed=0, progress=False)
    check_contract(sel, data, 0, 0.1)
    info = sel.info
    assert info["quota"] == {1: 4, 2: 4, 3: 4}
    np.testing.assert_array_equal(np.bincount(data.labels[sel.indices], minlength=4), [0, 4, 4, 4])
    # Only group-1 candidates (the closer half of each class) are chosen, with their influence as score.
    assert np.isin(sel.indices, info["candidates"]).all()
    # Group 1 is the closer half of each class of the candidate pool, which lacks the held-out ASR set.
    pool = np.setdiff1d(candidate_pool(data, 0, None), info["asr_set"]["indices"])
    assert info["pool"] == pool.size
    sizes = np.bincount(data.labels[pool], minlength=4)
    assert info["group1_sizes"] == {c: math.ceil(sizes[c] / 2) for c in (1, 2, 3)}
    lookup = dict(zip(info["candidates"].tolist(), info["candidate_scores"].tolist(), strict=True))
    np.testing.assert_array_equal(sel.scores, [lookup[i] for i in sel.indices.tolist()])
    for c in (1, 2, 3):  # each class keeps exactly its top-k_c: nothing unchosen of the class beats τ^c
        mine = data.labels[info["candidates"]] == c
        chosen = np.isin(info["candidates"], sel.indices)
        assert info["thresholds"][c] == sel.scores[data.labels[sel.indices] == c].min()
        assert np.all(info["candidate_scores"][mine & ~chosen] <= info["thresholds"][c])
    assert info["lissa"]["finite"] and set(info["timings"]) >= {"surrogate", "lissa", "influence"}
    assert info["lissa"]["depth"] == 20 and info["lissa"]["effective_damping"] == 0.01
    assert info["lissa"]["damping_form"] == "hessian" and info["lissa"]["curvature"] == "gauss_newton"
    # The residual's 3 disjoint batches of 40 cover the whole training set.
    assert info["lissa"]["residual_examples"] == 120 and 0.0 <= info["lissa"]["residual"] < math.inf
    assert 0.0 <= info["lissa"]["iterate_change"] < math.inf and info["lissa"]["top_eigenvalue"] > 0
    again = ifs_selection(data, trigger, 0, 0.1, config, seed=0, progress=False)
    np.testing.assert_array_equal(sel.indices, again.indices)
    np.testing.assert_array_equal(sel.scores, again.scores)


def test_ifs_warns_about_an_unsettled_lissa_and_refuses_a_diverged_one():
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)

    def config(scale, auto_scale=False, curvature="hessian"):
        return IFSConfig(eta=2, surrogate_epochs=1, model="mlp", model_kwargs={"hidden": (16,)}, batch_size=40,
                         lissa=LissaConfig(damping=0.0, scale=scale, depth=40, batch_size=40),
                         validation_size=24, auto_scale=auto_scale, curvature=curvature)  # fmt: skip

    with pytest.warns(RuntimeWarning, match="LiSSA has not settled"):  # scale below the top eigenvalue: growth
        sel = ifs_selection(data, trigger, 0, 0.1, config(0.5), progress=False)
    assert sel.info["lissa"]["relative_change"] > 0.1
    with pytest.raises(SelectionError, match=r"LiSSA diverged .*raise lissa.scale \(now 0.0001\)"):
        ifs_selection(data, trigger, 0, 0.1, config(1e-4), progress=False)
    # The automatic scale rescues the same hopeless setting: the recursion stays finite.
    rescued = ifs_selection(data, trigger, 0, 0.1, config(1e-4, auto_scale=True, curvature="gauss_newton"),
                            progress=False)  # fmt: skip
    assert rescued.info["lissa"]["finite"] and rescued.info["lissa"]["scale"] > 1e-4


def test_ifs_holds_its_asr_set_out_of_the_candidates(monkeypatch):
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)
    config = IFSConfig(eta=2, surrogate_epochs=1, model="mlp", model_kwargs={"hidden": (16,)}, batch_size=40,
                       lissa=LissaConfig(damping=0.01, scale=25.0, depth=20, batch_size=40), validation_size=24,
                       influence_batch_size=32)  # fmt: skip
    used = []  # every dataset whose mean-loss gradient IFS takes: the ASR set
    real = ifs_module.mean_loss_gradient
    monkeypatch.setattr(ifs_module, "mean_loss_gradient", lambda model, d, *a: used.append(d) or real(model, d, *a))
    sel = ifs_selection(data, trigger, 0, 0.1, config, seed=0, progress=False)
    asr = sel.info["asr_set"]
    assert asr["source"] == "held-out training images" and asr["size"] == 24 == len(asr["indices"])
    held = np.asarray(asr["indices"])
    assert np.unique(held).size == 24 and np.all(data.labels[held] != 0)
    assert asr["data_hash"] == data.content_hash
    # The ASR loss is exactly the triggered held-out images, and none of them can be chosen or scored.
    assert len(used) == 1
    np.testing.assert_array_equal(used[0].images, triggered(data, held, trigger, 0).images)
    assert not np.isin(held, sel.info["candidates"]).any() and not np.isin(held, sel.indices).any()
    assert sel.info["pool"] == candidate_pool(data, 0, None).size - 24


def test_asr_holdout_removes_held_images_and_their_exact_copies_from_the_candidates():
    from jaxpoison.selection.ifs import asr_holdout

    data = tiny_data()
    images = data.images.copy()
    images[100:110] = images[10:20]  # ten byte-identical copies inside the pool
    data = data.replace(images=images)
    pool = candidate_pool(data, 0, None)
    exclude = pool[:5]
    held, candidates = asr_holdout(data, pool, exclude, 30, np.random.default_rng(0))
    assert held.size == 30 and np.all(np.diff(held) > 0) and not np.isin(held, exclude).any()
    copies = {i: j for i, j in zip(range(10, 20), range(100, 110), strict=True) if i in pool and j in pool}
    twins = [j for i, j in copies.items() if i in held] + [i for i, j in copies.items() if j in held]
    assert twins, "the draw must hit a duplicated image for the check to mean something"
    np.testing.assert_array_equal(candidates, np.setdiff1d(pool, np.concatenate([held, twins])))
    half = pool.size // 2
    with pytest.raises(SelectionError, match=rf"validation_size {half + 1} exceeds the {half} non-target training"):
        asr_holdout(data, pool, exclude, half + 1, np.random.default_rng(0))


def test_lissa_scale_for_each_damping_form():
    from jaxpoison.selection.ifs import lissa_scale_for

    assert lissa_scale_for(40.0, LissaConfig(damping=0.5, scale=25.0)) == 81.0  # 2·(40 + 0.5)
    assert lissa_scale_for(4.0, LissaConfig(damping=0.5, scale=25.0)) == 25.0  # never below the requested scale
    per_step = LissaConfig(damping=0.2, scale=25.0, damping_form="per_step")
    assert lissa_scale_for(40.0, per_step) == pytest.approx(100.0)  # 2·40 / (1 − 0.2)


def test_ifs_refuses_a_callers_validation_set_that_shares_images_with_the_pool():
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)
    config = IFSConfig(eta=2, surrogate_epochs=1, model="mlp", model_kwargs={"hidden": (16,)}, batch_size=40,
                       lissa=LissaConfig(damping=0.01, scale=25.0, depth=20, batch_size=40), validation_size=24,
                       influence_batch_size=32)  # fmt: skip
    leaky = data.subset(np.arange(60, 120))  # training images handed back as "validation"
    with pytest.raises(SelectionError, match=r"validation set .* identical to .* training images"):
        ifs_selection(data, trigger, 0, 0.1, config, seed=0, progress=False, validation=leaky)
    fresh = make_dataset(n=50, shape=(8, 8, 1), num_classes=4, seed=7)
    sel = ifs_selection(data, trigger, 0, 0.1, config, seed=0, progress=False, validation=fresh)
    asr = sel.info["asr_set"]
    assert asr["source"] == "caller's validation set" and asr["data_hash"] == fresh.content_hash
    assert asr["size"] == 24 and np.all(fresh.labels[asr["indices"]] != 0)
    assert sel.info["pool"] == candidate_pool(data, 0, None).size  # nothing of the training set held out


def test_triggered_candidates_are_clipped_and_relabelled():
    data = tiny_data()
    trigger = square_patch(data.image_shape, size=2, color=(1.0,))
    out = triggered(data, [5, 1], trigger, target=3)
    np.testing.assert_array_equal(out.labels, [3, 3])
    np.testing.assert_allclose(out.images, np.clip(np.asarray(trigger.apply(data.images[[5, 1]])), 0, 1))


def test_select_poisons_dispatches_by_name_and_refuses_bad_requests():
    from jaxpoison.selection import SELECTORS, FUSConfig, random_selection, select_poisons

    data = load_dataset("digits")
    assert SELECTORS == ("rs", "fus", "rd", "hfe", "ifs")
    by_name = select_poisons("rs", data, None, 0, 0.05, seed=3)
    np.testing.assert_array_equal(by_name.indices, random_selection(data, 0, 0.05, seed=3).indices)
    with pytest.raises(SelectionError, match="unknown selection method 'xyz'"):
        select_poisons("xyz", data, None, 0, 0.05)
    with pytest.raises(SelectionError, match="ifs takes IFSConfig; got FUSConfig"):
        select_poisons("ifs", data, None, 0, 0.05, FUSConfig())
