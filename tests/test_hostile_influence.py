"""Nothing silent: hostile inputs and damaged artifacts are refused with an InputError that says what to change.

Every case here once gave a plausible-looking wrong answer (scores 235× too large, NaN scores
that flag nothing, another model's factors) instead of an error.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxpoison.detection import DeltaConfig, delta_influence
from jaxpoison.errors import ArtifactError, InputError
from jaxpoison.influence import (
    FactorConfig,
    FactorError,
    ScoreConfig,
    TrakConfig,
    fit_factors,
    load_factors,
    pairwise_scores,
    precondition,
    save_factors,
    self_scores,
    trak_scores,
)
from jaxpoison.influence import kfac as kfac_module
from jaxpoison.models import create_model, to_functional
from tests.conftest import make_dataset

SHAPE = (8, 8, 1)
CLASSES = 4
FIT_CONFIG = FactorConfig(batch_size=4, seed=2)  # one batch shape for every fit here: one compilation


def _model(seed=0):
    return to_functional(create_model("cnn", SHAPE, CLASSES, seed=seed, width=2, hidden=8))


@pytest.fixture(scope="module")
def setup():
    data = make_dataset(n=16, shape=SHAPE, num_classes=CLASSES)
    model = _model()
    factors = fit_factors(model, data, FIT_CONFIG, progress=False)
    return SimpleNamespace(data=data, model=model, factors=factors)


def _pairwise(s, images=None, labels=None, *, model=None, factors=None, config=ScoreConfig()):
    images = s.data.images[:2] if images is None else images
    labels = s.data.labels[:2] if labels is None else labels
    return pairwise_scores(model or s.model, s.data, images, labels, factors, config, progress=False)


def _delta(s, images, *, model=None, config=None):
    config = config or DeltaConfig(n_b=2, n_tol=0, modify="label")  # relabelling only: no transforms to compile
    return delta_influence(model or s.model, s.data, images, 1, None, config, progress=False)


def _trak(s, images, labels, *, model=None):
    return trak_scores(model or s.model, s.data, images, labels, TrakConfig(projection_dim=8, batch_size=8),
                       progress=False)  # fmt: skip


def _nan_factors(factors):
    return factors._replace(blocks=jax.tree.map(lambda b: b.at[0].set(jnp.nan), factors.blocks))


def _scaled(model, factor):
    return model.replace(params=jax.tree.map(lambda a: a * factor, model.params))


# --------------------------------------------------------------------------- B: validation at the boundary


@pytest.mark.parametrize(
    "call",
    [
        lambda s: _pairwise(s, (s.data.images[:2] * 255).astype(np.uint8)),
        lambda s: _pairwise(s, (s.data.images[:2] * 255).astype(np.int64)),
        lambda s: _pairwise(s, s.data.images[:2] > 0.5),
        lambda s: _delta(s, (s.data.images[:1] * 255).astype(np.uint8)),
        lambda s: _trak(s, (s.data.images[:1] * 255).astype(np.uint8), s.data.labels[:1]),
    ],
    ids=["uint8", "int64", "bool", "delta-uint8", "trak-uint8"],
)
def test_integer_images_are_refused_not_scored_unscaled(setup, call):
    with pytest.raises(InputError, match=r"dtype (uint8|int64|bool).*astype\(np\.float32\) / 255"):
        call(setup)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])  # 1e39 overflows float32
@pytest.mark.parametrize("where", ["pairwise", "delta"])
def test_non_finite_images_are_refused(setup, bad, where):
    images = setup.data.images[:2].astype(np.float64)
    images[1, 3, 4, 0] = bad
    call = (lambda: _pairwise(setup, images)) if where == "pairwise" else (lambda: _delta(setup, images))
    with pytest.raises(InputError, match=r"(query|test) images contain NaN or Inf .*image\(s\) \[1\]"):
        call()


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([1.0, 2.0]), r"dtype float64.*not truncated"),
        (np.array([1.7, 2.2], np.float32), r"dtype float32.*not truncated"),
        (np.array([True, False]), r"dtype bool"),
        (np.array([0, CLASSES]), r"must lie in \[0, 4\)"),
        (np.array([-1, 0]), r"must lie in \[0, 4\)"),
        (np.array([0, 1, 2]), r"2 query images but 3 query labels"),
        (np.array([[0, 1]]), r"1-D"),
    ],
    ids=["float64", "float32", "bool", "too-large", "negative", "count", "2-d"],
)
def test_bad_labels_are_refused(setup, labels, match):
    with pytest.raises(InputError, match=match):
        _pairwise(setup, setup.data.images[:2], labels)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: _pairwise(s, np.zeros((0, *SHAPE), np.float32), np.zeros(0, np.int32)), r"no query images"),
        (lambda s: _delta(s, np.zeros((0, *SHAPE), np.float32)), r"no test images"),
        (lambda s: _trak(s, np.zeros((0, *SHAPE), np.float32), np.zeros(0, np.int32)), r"no query images"),
        (lambda s: self_scores(s.model, s.data.subset(np.arange(0)), None, progress=False), r"training set is empty"),
        (lambda s: fit_factors(s.model, s.data.subset(np.arange(0)), progress=False), r"training set is empty"),
    ],
    ids=["pairwise", "delta", "trak", "self-empty-train", "fit-empty-train"],
)
def test_zero_queries_are_refused(setup, call, match):
    with pytest.raises(InputError, match=match):
        call(setup)


@pytest.mark.parametrize("damping", [float("inf"), float("nan"), 0.0, -1.0, "1e-3", True])
def test_damping_must_be_finite_and_positive(setup, damping):
    with pytest.raises(InputError, match=r"damping must be a finite number > 0, or None"):
        ScoreConfig(damping=damping)
    grads = {layer.name: jnp.zeros((1, layer.in_dim, layer.out_features)) for layer in setup.factors.layers}
    with pytest.raises(InputError, match=r"damping must be a finite number > 0"):
        precondition(setup.factors, grads, damping)
    if damping not in (0.0,):  # TRAK solves by least squares: 0 is its (valid) default
        with pytest.raises(InputError, match=r"TrakConfig\.damping must be a finite number ≥ 0"):
            TrakConfig(damping=damping)


def test_none_damping_means_the_mean_eigenvalue_for_scores_but_is_refused_by_trak(setup):
    values = _pairwise(setup, factors=setup.factors, config=ScoreConfig(damping=None)).values
    assert np.all(np.isfinite(values))
    with pytest.raises(InputError, match=r"TrakConfig\.damping must be a finite number ≥ 0"):
        TrakConfig(damping=None)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tau": float("nan")}, r"tau must be a finite number; got nan"),
        ({"tau": float("inf")}, r"tau must be a finite number; got inf"),
        ({"tau": -float("inf")}, r"tau must be a finite number"),
        ({"tau": "0"}, r"tau must be a finite number"),
        ({"n_b": 2.5}, r"n_b must be an integer"),
        ({"n_tol": 1.0}, r"n_tol must be an integer"),
        ({"seed": 0.5}, r"seed must be an integer"),
        ({"transforms": "flip"}, r"tuple of names"),
    ],
    ids=["tau-nan", "tau-inf", "tau-minus-inf", "tau-str", "n_b-float", "n_tol-float", "seed-float", "transforms-str"],
)
def test_delta_config_fields_are_finite_and_in_range(changes, match):
    with pytest.raises(InputError, match=match):
        DeltaConfig(**changes)
    with pytest.raises(InputError, match=match):
        DeltaConfig().replace(**changes)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize("where", ["fit", "pairwise", "self", "trak"])
def test_non_floating_parameters_are_refused(setup, dtype, where):
    params = jax.tree.map(lambda a: a, setup.model.params)
    params["fc2"]["kernel"] = params["fc2"]["kernel"].astype(dtype)
    model = setup.model.replace(params=params)
    call = {
        "fit": lambda: fit_factors(model, setup.data, progress=False),
        "pairwise": lambda: _pairwise(setup, model=model),
        "self": lambda: self_scores(model, setup.data, progress=False),
        "trak": lambda: _trak(setup, setup.data.images[:1], setup.data.labels[:1], model=model),
    }[where]
    with pytest.raises(InputError, match=r"must be floating point; not floating: \['fc2'\]\['kernel'\]"):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        # Finite weights whose logits overflow: the query gradients are already NaN.
        (lambda s: _pairwise(s, model=_scaled(s.model, 1e20)), InputError, r"query gradients contain NaN or Inf"),
        # Large but finite gradients whose products overflow: only the scores are Inf.
        (lambda s: _pairwise(s, model=_scaled(s.model, 1e7)), InputError, r"influence scores contain NaN or Inf"),
        (
            lambda s: self_scores(_scaled(s.model, 1e7), s.data, progress=False),
            InputError,
            r"self-influence scores contain NaN or Inf",
        ),
        (
            lambda s: _delta(s, s.data.images[:1], model=_scaled(s.model, 1e7)),
            InputError,
            r"(scores|gradients) contain NaN",
        ),
        (
            lambda s: _trak(s, s.data.images[:1], s.data.labels[:1], model=_scaled(s.model, 1e20)),
            InputError,
            r"TRAK features contain NaN or Inf",
        ),
        (lambda s: _pairwise(s, factors=_nan_factors(s.factors)), FactorError, r"the factors contain NaN or Inf"),
    ],
    ids=["query-gradients", "scores", "self-scores", "delta", "trak", "factors"],
)
def test_non_finite_results_are_refused_not_returned(setup, call, error, match):
    with pytest.raises(error, match=match) as caught:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the backdoor-miss warning of Δ-Influence
            call(setup)
    assert "non-finite values" in str(caught.value) or "diverged" in str(caught.value)


# --------------------------------------------------------------------------- A1: partial factor sums


def _same_blocks(a, b) -> bool:
    return a.blocks.keys() == b.blocks.keys() and all(
        np.array_equal(np.asarray(a.blocks[n][k]), np.asarray(b.blocks[n][k])) for n in a.blocks for k in a.blocks[n]
    )


class _Interrupt(Exception):
    pass


def _interrupted_fit(model, data, config, directory, monkeypatch, after=3):
    """Fit with checkpoints until the Lambda pass dies after ``after`` batches (covariance complete)."""
    original, calls = kfac_module._lambda_step, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(kfac_module, "_lambda_step", failing)
    with pytest.raises(_Interrupt):
        fit_factors(model, data, config, checkpoint_dir=directory, checkpoint_every=1, progress=False)
    monkeypatch.setattr(kfac_module, "_lambda_step", original)


@pytest.fixture(scope="module")
def fit_setup():
    data = make_dataset(n=20, shape=SHAPE, num_classes=CLASSES)
    config = FIT_CONFIG  # 5 batches per pass
    return SimpleNamespace(data=data, config=config, model=_model())


@pytest.mark.parametrize(
    ("other", "match"),
    [
        ("params", r"fitted for other parameters"),
        ("data", r"fitted for other data"),
        ("config", r"fitted for another FactorConfig"),
    ],
)
def test_partial_sums_of_another_fit_are_discarded_not_reused(tmp_path, fit_setup, monkeypatch, other, match):
    s = fit_setup
    _interrupted_fit(s.model, s.data, s.config, tmp_path, monkeypatch)
    model, data, config = s.model, s.data, s.config
    if other == "params":
        model = _model(seed=3)
    elif other == "data":
        data = make_dataset(n=20, shape=SHAPE, num_classes=CLASSES, seed=7)
    else:
        config = FactorConfig(batch_size=4, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fit_factors(model, data, config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    notes = [str(w.message) for w in caught if "partial factor sums" in str(w.message)]
    assert len(notes) == 2, notes  # both passes had stale sums: covariance and Lambda
    for note, stage in zip(notes, ("covariance", "lambda"), strict=True):
        assert re.search(rf"partial factor sums in .*{stage} were {match}.*: discarding them and starting over", note)
    fresh = fit_factors(model, data, config, progress=False)
    stale = fit_factors(s.model, s.data, s.config, progress=False)
    assert _same_blocks(got, fresh) and not _same_blocks(got, stale)
    assert got.meta["resumed_from"] == {} and got.meta["params_hash"] == fresh.meta["params_hash"]
    # The recomputed sums now carry the new fingerprint: a rerun resumes them, silently.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="partial factor sums")
        again = fit_factors(model, data, config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert again.meta["resumed_from"] == {"covariance": 5, "lambda": 5} and _same_blocks(again, fresh)


def test_matching_partial_sums_are_resumed(tmp_path, fit_setup, monkeypatch):
    s = fit_setup
    reference = fit_factors(s.model, s.data, s.config, progress=False)
    assert reference.meta["resumed_from"] == {}
    _interrupted_fit(s.model, s.data, s.config, tmp_path, monkeypatch, after=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="partial factor sums")
        resumed = fit_factors(s.model, s.data, s.config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert resumed.meta["resumed_from"] == {"covariance": 5, "lambda": 3}
    assert _same_blocks(resumed, reference)


def _truncate_data_files(root):
    """Halve every Orbax/TensorStore data file (those in ``d/`` folders) under ``root``."""
    files = [p for p in root.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)


def test_truncated_partial_sums_are_discarded(tmp_path, fit_setup):
    s = fit_setup
    fresh = fit_factors(s.model, s.data, s.config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    _truncate_data_files(tmp_path / "covariance")
    with pytest.warns(UserWarning, match=r"checkpoint step \d+ in .*covariance is damaged"):
        got = fit_factors(s.model, s.data, s.config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert "covariance" not in got.meta["resumed_from"] and _same_blocks(got, fresh)


def test_partial_sums_without_a_fingerprint_are_discarded(tmp_path, fit_setup):
    s = fit_setup
    fit_factors(s.model, s.data, s.config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    (tmp_path / "lambda" / "fingerprint.json").unlink()  # as written by an older jaxpoison
    with pytest.warns(UserWarning, match=r"lambda have no readable fingerprint"):
        got = fit_factors(s.model, s.data, s.config, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert got.meta["resumed_from"] == {"covariance": 5}


# --------------------------------------------------------------------------- A2: saved factors


@pytest.fixture(scope="module")
def two_fits():
    model = _model()
    a = fit_factors(model, make_dataset(n=16, shape=SHAPE, num_classes=CLASSES, seed=1), FIT_CONFIG, progress=False)
    b = fit_factors(model, make_dataset(n=16, shape=SHAPE, num_classes=CLASSES, seed=2), FIT_CONFIG, progress=False)
    return model, a, b


def test_factors_round_trip_verifies_hashes(tmp_path, two_fits):
    model, a, _ = two_fits
    save_factors(tmp_path / "a", a)
    record = json.loads((tmp_path / "a" / "factors.json").read_text())
    assert record["format"] == kfac_module.FACTORS_FORMAT and record["meta"] == a.meta
    assert set(record["sha256"]) == set(a.blocks) and len(record["sha256"]["fc1"]["eigenvalues"]) == 64
    assert _same_blocks(load_factors(tmp_path / "a", model), a)
    assert not list((tmp_path / "a").glob(".*tmp"))  # the atomic write left no temporary file


def test_swapped_block_files_are_refused(tmp_path, two_fits):
    model, a, b = two_fits
    save_factors(tmp_path / "a", a)
    save_factors(tmp_path / "b", b)
    # Same model, other data: params hash and layers agree, only the arrays differ.
    shutil.move(tmp_path / "a" / "blocks", tmp_path / "blocks-a")
    shutil.move(tmp_path / "b" / "blocks", tmp_path / "a" / "blocks")
    blocks = re.escape(str(tmp_path / "a" / "blocks"))
    with pytest.raises(ArtifactError, match=rf"{blocks} are not the ones its factors\.json"):
        load_factors(tmp_path / "a", model)


def test_truncated_factor_files_are_refused(tmp_path, two_fits):
    model, a, _ = two_fits
    save_factors(tmp_path / "a", a)
    _truncate_data_files(tmp_path / "a" / "blocks")
    blocks = re.escape(str(tmp_path / "a" / "blocks"))
    with pytest.raises(ArtifactError, match=rf"{blocks} (cannot be read|are not the ones)") as e:
        load_factors(tmp_path / "a", model)
    assert len(str(e.value).splitlines()) == 1  # one line, not a TensorStore traceback


def _write_legacy_json(directory):
    """factors.json as format 1 wrote it: the bare meta, no content hashes."""
    path = directory / "factors.json"
    path.write_text(json.dumps(json.loads(path.read_text())["meta"]))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: (d / "factors.json").unlink(), r"factors\.json missing"),
        (lambda d: (d / "factors.json").write_text('{"format": 2, "meta": {'), r"not valid JSON"),
        (lambda d: (d / "factors.json").write_bytes(b"\xff\xfe\x00"), r"not valid JSON"),
        (_write_legacy_json, r"format 2 .*no content hashes"),
        (lambda d: (d / "factors.json").write_text("[]"), r"format 2"),
        (lambda d: shutil.rmtree(d / "blocks"), r"blocks cannot be read"),
    ],
    ids=["missing", "truncated-json", "binary", "legacy-format", "not-a-dict", "no-blocks"],
)
def test_damaged_factors_json_is_refused(tmp_path, two_fits, damage, match):
    model, a, _ = two_fits
    save_factors(tmp_path / "a", a)
    damage(tmp_path / "a")
    with pytest.raises(ArtifactError, match=match):
        load_factors(tmp_path / "a", model)


def test_a_save_that_dies_leaves_no_valid_looking_factors(tmp_path, two_fits, monkeypatch):
    import orbax.checkpoint as ocp

    model, a, b = two_fits
    save_factors(tmp_path / "a", a)

    def crash(*args, **kwargs):
        raise _Interrupt

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", crash)
    with pytest.raises(_Interrupt):
        save_factors(tmp_path / "a", b)
    with pytest.raises(ArtifactError, match=r"factors\.json missing"):
        load_factors(tmp_path / "a", model)


# --------------------------------------------------------------------------- property tests


def _wrong_dtype_images():
    dtypes = hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.boolean_dtypes() | hnp.complex_number_dtypes()
    return hnp.arrays(dtypes, st.sampled_from([SHAPE, (1, *SHAPE), (3, *SHAPE)]))


def _wrong_shape_images():
    def valid(shape):
        return shape == SHAPE or (len(shape) == 4 and shape[1:] == SHAPE and shape[0] > 0)

    shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9).filter(lambda shape: not valid(shape))
    return hnp.arrays(np.float32, shapes, elements=st.floats(0, 1, width=32))


@st.composite
def _non_finite_images(draw):
    images = draw(hnp.arrays(np.float32, st.sampled_from([SHAPE, (2, *SHAPE)]), elements=st.floats(0, 1, width=32)))
    flat = images.reshape(-1)
    for i in draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=4)):
        flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return images


HOSTILE_IMAGES = st.one_of(_wrong_dtype_images(), _wrong_shape_images(), _non_finite_images())
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _labels_for(images):
    count = images.shape[0] if images.ndim == len(SHAPE) + 1 else 1
    return np.zeros(count, np.int32)


@PROPERTY
@given(images=HOSTILE_IMAGES)
def test_pairwise_scores_refuse_hostile_query_images(setup, images):
    with pytest.raises(InputError):
        _pairwise(setup, images, _labels_for(images))


@PROPERTY
@given(images=HOSTILE_IMAGES)
def test_delta_influence_refuses_hostile_test_images(setup, images):
    with pytest.raises(InputError):
        _delta(setup, images)


@PROPERTY
@given(
    labels=st.one_of(
        hnp.arrays(hnp.floating_dtypes() | hnp.boolean_dtypes(), st.just((2,))),
        hnp.arrays(np.int64, st.just((2,)), elements=st.integers(CLASSES, 2**40) | st.integers(-(2**40), -1)),
        hnp.arrays(np.int32, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4).filter(lambda s: s != (2,))),
    )
)
def test_pairwise_scores_refuse_hostile_labels(setup, labels):
    with pytest.raises(InputError):
        _pairwise(setup, setup.data.images[:2], labels)
