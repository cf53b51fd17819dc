"""Hostile data: every malformed array, file or poisoning request is a clear InputError, never garbage.

Each case names what it feeds in and the part of the message that tells the user what to fix.
The property tests at the end throw generated arrays and parameters at ``Dataset`` and the
poisoning builder: the only acceptable outcomes are an :class:`InputError` or a valid result.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxpoison.attacks import PoisonConfig, PoisonError, poison_dataset, square_patch
from jaxpoison.data import Dataset, DatasetError, Provenance, load_dataset, read_idx, split_train_validation, write_idx
from jaxpoison.data.formats import read_npz_arrays
from jaxpoison.errors import InputError
from tests.conftest import make_dataset

# ----------------------------------------------------------------------------- helpers


def _dataset_args(**change) -> dict:
    args = dict(
        images=np.full((4, 5, 5, 1), 0.5, np.float32),
        labels=np.array([0, 1, 0, 1], np.int32),
        class_names=("a", "b"),
        mean=[0.5],
        std=[0.25],
        provenance=Provenance("t", "t", "train"),
    )
    return {**args, **change}


def _arrays(**change) -> dict:
    """A valid npz payload (uint8 6x6 grayscale, 3 classes); a value of None drops the key."""
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (9, 6, 6), dtype=np.uint8),
        y_train=np.arange(9) % 3,
        x_test=rng.integers(0, 256, (4, 6, 6), dtype=np.uint8),
        y_test=np.arange(4) % 3,
    )
    arrays.update(change)
    return {k: v for k, v in arrays.items() if v is not None}


def _with_nan(shape, where=None) -> np.ndarray:
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    x[where or (0,) * len(shape)] = np.nan  # one pixel
    return x


def _float_labels() -> np.ndarray:
    y = (np.arange(9) % 3).astype(np.float64)
    y[4] = 4.7
    return y


def _load_npz(tmp_path: Path, arrays: dict, split: str = "train", **options) -> Dataset:
    np.savez(tmp_path / "d.npz", **arrays)
    return load_dataset("npz", split, path=tmp_path / "d.npz", **options)


def test_valid_npz_still_loads(tmp_path):
    train = _load_npz(tmp_path, _arrays())
    test = load_dataset("npz", "test", path=tmp_path / "d.npz")
    assert train.num_classes == test.num_classes == 3 and train.image_shape == test.image_shape == (6, 6, 1)
    float_rgb = dict(x_train=np.random.default_rng(2).random((9, 4, 4, 3)), x_test=np.full((4, 4, 4, 3), 0.5))
    assert _load_npz(tmp_path, _arrays(**float_rgb), class_names=["p", "q", "r", "s"]).num_classes == 4


# ----------------------------------------------------------------------------- npz loader

NPZ_CASES = {
    # 1. non-finite pixels: NaN passes a [0, 1] check because it compares false.
    "nan-pixel-train": (dict(x_train=_with_nan((9, 6, 6))), r"x_train holds 1 non-finite value \(NaN or inf\)"),
    "inf-pixel-test": (dict(x_test=np.full((4, 6, 6), np.inf)), r"x_test holds 144 non-finite values"),
    # 3. labels: floats are never truncated, bools are not labels, no negatives.
    "float-labels": (dict(y_train=_float_labels()), r"y_train must hold integer class labels; got float64 \(4\.7"),
    "whole-float-labels": (dict(y_test=np.zeros(4)), r"y_test must hold integer class labels; got float64"),
    "bool-labels": (dict(y_test=np.array([True, False, True, False])), r"y_test must hold integer .*got bool"),
    "negative-labels": (dict(y_train=np.arange(9) % 3 - 1), r"y_train holds negative labels \(min -1\)"),
    "column-labels": (dict(y_train=(np.arange(9) % 3)[:, None]), r"y_train must be a 1-D array"),
    "label-wraps-int32": (
        dict(y_train=np.array([2**32, 1, 2**32 + 2] * 3, np.uint64)),
        r"y_train holds label 4294967298, too large for a class index",
    ),
    # 4. classes: a test label no training label reaches, gaps from 1-based labels.
    "test-label-beyond-train": (dict(y_test=np.array([0, 1, 2, 57])), r"y_test holds label 57 .* classes 0\.\.2"),
    "one-based-labels": (
        dict(y_train=np.arange(9) % 3 + 1, y_test=np.arange(4) % 3 + 1),
        r"1 of those 4 classes have no training example \(e\.g\. \[0\]\)",
    ),
    "single-class": (dict(y_train=np.zeros(9, int), y_test=np.zeros(4, int)), r"y_train holds a single class"),
    # 5. layouts: channel-first, flat vectors, too many axes.
    "nchw": (
        dict(x_train=np.zeros((9, 3, 6, 6), np.uint8), x_test=np.zeros((4, 3, 6, 6), np.uint8)),
        r"x_train has shape \(9, 3, 6, 6\), which looks channel-first .*x\.transpose\(0, 2, 3, 1\)",
    ),
    "nchw-gray": (dict(x_test=np.zeros((4, 1, 6, 6), np.uint8)), r"x_test .*looks channel-first"),
    "flat-2d": (dict(x_train=np.zeros((9, 36), np.uint8)), r"x_train must be 4-D NHWC .*got shape \(9, 36\)"),
    "5d": (dict(x_test=np.zeros((4, 6, 6, 1, 1), np.uint8)), r"x_test must be 4-D NHWC"),
    # 6. the splits must agree on the image shape.
    "shape-mismatch": (dict(x_test=np.zeros((4, 7, 7), np.uint8)), r"x_train images have shape \(6, 6, 1\) but x_test"),
    # 7. empty files and splits.
    "no-arrays": ({"x_train": None, "y_train": None, "x_test": None, "y_test": None}, r"holds no arrays at all"),
    "missing-key": (dict(y_test=None), r"lacks arrays \['y_test'\]"),
    "empty-test": (dict(x_test=np.zeros((0, 6, 6), np.uint8), y_test=np.zeros(0, int)), r"x_test holds no examples"),
    "empty-flat": (dict(x_train=np.zeros(0, np.uint8), y_train=np.zeros(0, int)), r"x_train holds no examples"),
    "pairing": (dict(y_train=np.arange(8) % 3), r"x_train holds 9 images but y_train holds 8 labels"),
    # 10. pixel values and dtypes: only uint8 is scaled (by 255); floats must be in [0, 1].
    "float-0-255": (dict(x_train=np.full((9, 6, 6), 200.0)), r"x_train must lie in \[0, 1\]; got range \[200"),
    "int64-pixels": (dict(x_test=np.zeros((4, 6, 6), np.int64)), r"x_test must be uint8 \(0-255\) or float"),
    "bool-pixels": (dict(x_test=np.zeros((4, 6, 6), bool)), r"x_test must be uint8 \(0-255\) or float"),
    "constant-images": (dict(x_train=np.zeros((9, 6, 6), np.uint8)), r"x_train is constant in channel\(s\) \[0\]"),
}


@pytest.mark.parametrize("change, pattern", list(NPZ_CASES.values()), ids=list(NPZ_CASES))
def test_hostile_npz_arrays(tmp_path, change, pattern):
    for split in ("train", "test"):  # both splits are checked whichever is asked for
        with pytest.raises(DatasetError, match=pattern):
            _load_npz(tmp_path, _arrays(**change), split)


def test_npz_class_names_must_cover_every_label(tmp_path):
    with pytest.raises(DatasetError, match=r"y_train holds label 2 but only 2 class_names were given"):
        _load_npz(tmp_path, _arrays(), class_names=["a", "b"])
    with pytest.raises(DatasetError, match=r"class_names must be a list of names, not one string"):
        _load_npz(tmp_path, _arrays(), class_names="abc")
    # With explicit names, a class absent from training is the user's stated intent.
    data = _load_npz(tmp_path, _arrays(y_train=np.arange(9) % 2), class_names=["a", "b", "c"])
    assert data.num_classes == 3


# ----------------------------------------------------------------------------- npz files (8.)


def _text_file(path):
    path.write_text("x_train,y_train\n1,2\n")


def _npy_file(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def _truncated_zip(path):
    np.savez(path, **_arrays())
    path.write_bytes(path.read_bytes()[:200])


def _zip_with_text_member(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.txt", "hello")


def _pickled_objects(path):
    np.savez(path, x_train=np.array([{"a": 1}], dtype=object))


FILE_CASES = {
    "text-file": (_text_file, r"d\.npz is not a valid \.npz \(zip\) file"),
    "npy-file": (_npy_file, r"not a valid \.npz \(zip\) file\. It is a single \.npy array"),
    "truncated-zip": (_truncated_zip, r"not a valid \.npz \(zip\) file\. It may be truncated"),
    "text-member": (_zip_with_text_member, r"member 'x_train\.txt' is not a \.npy array"),
    "pickled-objects": (_pickled_objects, r"holds object arrays \('x_train'\) that would need unpickling"),
}


@pytest.mark.parametrize("write, pattern", list(FILE_CASES.values()), ids=list(FILE_CASES))
def test_hostile_npz_files(tmp_path, write, pattern):
    write(tmp_path / "d.npz")
    with pytest.raises(DatasetError, match=pattern):
        read_npz_arrays(tmp_path / "d.npz")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("npz", "train", path=tmp_path / "d.npz")


def test_npz_path_that_is_a_directory_or_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"is a directory, not an \.npz file"):
        read_npz_arrays(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        read_npz_arrays(tmp_path / "absent.npz")


# ----------------------------------------------------------------------------- IDX (1., 3., 9.)


def test_idx_header_overflowing_int64_is_refused(tmp_path):
    # 2**31 * 2**31 * 4 = 2**64 bytes: wraps to 0 in int64, matching an empty payload.
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    (tmp_path / "x.idx").write_bytes(header)
    with pytest.raises(DatasetError, match=r"holds 0 data bytes but its header promises 18446744073709551616"):
        read_idx(tmp_path / "x.idx")


def test_idx_header_with_absurd_rank_is_refused(tmp_path):
    (tmp_path / "x.idx").write_bytes(bytes([0, 0, 0x08, 200]) + (1).to_bytes(4, "big") * 200 + b"\x00")
    with pytest.raises(DatasetError, match=r"header claims 200 dimensions"):
        read_idx(tmp_path / "x.idx")


def _fake_mnist(directory, images_train=None, labels_train=None):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        if prefix == "train":
            images = images if images_train is None else images_train
            labels = labels if labels_train is None else labels_train
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)


IDX_CASES = {
    "nan-float-images": (
        dict(images_train=_with_nan((6, 28, 28), (2, 3, 4))),
        r"train-images-idx3-ubyte\.gz holds 1 non-finite value .*examples 2",
    ),
    "float-labels": (
        dict(labels_train=np.array([0, 1, 2, 3.5, 4, 5], np.float32)),
        r"train-labels-idx1-ubyte\.gz must hold integer class labels; got float32 \(3\.5",
    ),
    "label-beyond-classes": (
        dict(labels_train=np.array([0, 1, 2, 3, 4, 12], np.uint8)),
        r"train-labels-idx1-ubyte\.gz must lie in \[0, 10\)",
    ),
}


@pytest.mark.parametrize("change, pattern", list(IDX_CASES.values()), ids=list(IDX_CASES))
def test_hostile_idx_dataset(no_local_data, change, pattern):
    _fake_mnist(no_local_data / "mnist", **change)
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("mnist", "train")


# ----------------------------------------------------------------------------- Dataset itself

DATASET_CASES = {
    # 1. non-finite pixels
    "nan-pixel": (dict(images=_with_nan((4, 5, 5, 1), (1, 2, 2, 0))), r"images holds 1 non-finite value .*examples 1"),
    "inf-pixel": (dict(images=np.full((4, 5, 5, 1), -np.inf, np.float32)), r"images holds 100 non-finite values"),
    "float64-overflows-float32": (dict(images=np.full((4, 5, 5, 1), 1e300)), r"images must lie in \[0, 1\]"),
    # 2. normalisation constants
    "nan-mean": (dict(mean=[np.nan]), r"mean must be finite"),
    "nan-std": (dict(std=float("nan")), r"std must be finite"),
    "inf-std": (dict(std=[np.inf]), r"std must be finite"),
    "zero-std": (dict(std=[0.0]), r"std must be positive"),
    "negative-std": (dict(std=[-0.2]), r"std must be positive"),
    "none-mean": (dict(mean=None), r"mean must be numbers, one per channel"),
    "string-std": (dict(std="0.3"), r"std must be numbers, one per channel"),
    "mean-per-channel": (dict(mean=[0.5, 0.5]), r"one value per channel \(1\)"),
    # 3. labels
    "float-labels": (dict(labels=np.array([0, 1, 0, 1.5])), r"labels must hold integer .*got float64 \(1\.5"),
    "bool-labels": (dict(labels=np.array([True, False, True, False])), r"labels must hold integer .*got bool"),
    "negative-label": (dict(labels=np.array([0, 1, -1, 1])), r"labels holds negative labels"),
    "label-wraps-int32": (dict(labels=np.array([0, 1, 0, 2**32 + 1])), r"labels must lie in \[0, 2\)"),
    "huge-uint64-label": (dict(labels=np.array([0, 1, 0, 2**63], np.uint64)), r"labels must lie in \[0, 2\)"),
    "label-per-image": (dict(labels=np.zeros(3, np.int32)), r"one label per image"),
    # class names
    "string-class-names": (dict(class_names="ab"), r"class_names must be an ordered sequence .*got a str"),
    "set-class-names": (dict(class_names={"a", "b"}), r"class_names must be an ordered sequence .*got a set"),
    "one-class": (dict(class_names=("a",), labels=np.zeros(4, int)), r"at least 2 classes"),
    # 5. layouts
    "nchw": (
        dict(images=np.zeros((4, 3, 5, 5), np.float32), mean=[0.5] * 5, std=[0.2] * 5),
        r"looks channel-first \(NCHW\).*x\.transpose\(0, 2, 3, 1\)",
    ),
    "3d": (dict(images=np.zeros((4, 5, 5), np.float32)), r"images must be a 4-D NHWC array"),
    "5d": (dict(images=np.zeros((4, 5, 5, 1, 1), np.float32)), r"images must be a 4-D NHWC array"),
    "empty-image-axis": (dict(images=np.zeros((4, 0, 5, 1), np.float32)), r"empty image dimension"),
    "ragged": (dict(images=[[[[0.0]]], [[[0.0], [0.0]]]]), r"images must be one rectangular array"),
    # 10. integer images are refused, never used unscaled or guessed at
    "uint8-images": (
        dict(images=np.full((4, 5, 5, 1), 255, np.uint8)),
        r"floating point in \[0, 1\]; got dtype uint8\. .*astype\(np\.float32\) / 255",
    ),
    "bool-images": (dict(images=np.ones((4, 5, 5, 1), bool)), r"floating point in \[0, 1\]; got dtype bool"),
    "float-0-255": (dict(images=np.full((4, 5, 5, 1), 255.0, np.float32)), r"images must lie in \[0, 1\]; got range"),
}


@pytest.mark.parametrize("change, pattern", list(DATASET_CASES.values()), ids=list(DATASET_CASES))
def test_hostile_dataset_fields(change, pattern):
    Dataset(**_dataset_args())  # the baseline is valid
    with pytest.raises(DatasetError, match=pattern):
        Dataset(**_dataset_args(**change))


# ----------------------------------------------------------------------------- sizes and options (11.)

SIZE_CASES = {
    "first-negative": (lambda d: d.first(-5), r"cannot keep the first -5 examples .*positive integer"),
    "first-zero": (lambda d: d.first(0), r"cannot keep the first 0 examples"),
    "first-float": (lambda d: d.first(2.5), r"cannot keep the first 2\.5 examples"),
    "first-bool": (lambda d: d.first(True), r"cannot keep the first True examples"),
    "subset-negative-index": (lambda d: d.subset([0, -1]), r"subset indices must lie in \[0, 64\)"),
    "subset-float-indices": (lambda d: d.subset([0.0, 1.7]), r"subset indices must be integers; got dtype float64"),
    "subset-short-mask": (lambda d: d.subset(np.ones(3, bool)), r"boolean subset mask needs one entry per example"),
    "subset-2d": (lambda d: d.subset([[0, 1]]), r"subset indices must be a 1-D array"),
    "split-empty": (lambda d: split_train_validation(d.subset([]), 0.2), r"it has no examples"),
    "split-nan-fraction": (lambda d: split_train_validation(d, np.nan), r"validation fraction must be in \(0, 1\)"),
    "split-bool-fraction": (lambda d: split_train_validation(d, True), r"validation fraction must be a number"),
}


@pytest.mark.parametrize("call, pattern", list(SIZE_CASES.values()), ids=list(SIZE_CASES))
def test_hostile_sizes(tiny_dataset, call, pattern):
    with pytest.raises(DatasetError, match=pattern):
        call(tiny_dataset)


def test_first_keeps_a_prefix(tiny_dataset):
    np.testing.assert_array_equal(tiny_dataset.first(5).labels, tiny_dataset.labels[:5])
    assert len(tiny_dataset.first(10_000)) == len(tiny_dataset)
    assert len(tiny_dataset.subset([])) == 0  # an empty selection is still a (valid, empty) dataset


OPTION_CASES = {
    "npz-train-size": (dict(name="npz", train_size=-5), r"dataset 'npz' has no option train_size; it takes path"),
    "digits-path": (dict(name="digits", path="x.npz"), r"no option path; it takes none \(--data-path is only for"),
    "imagenette-size": (dict(name="imagenette", image_size=-5), r"image_size must be a positive integer"),
}


@pytest.mark.parametrize("options, pattern", list(OPTION_CASES.values()), ids=list(OPTION_CASES))
def test_hostile_loader_options(tmp_path, no_local_data, options, pattern):
    np.savez(tmp_path / "d.npz", **_arrays())
    options = dict(options)
    name = options.pop("name")
    if name == "npz":
        options["path"] = tmp_path / "d.npz"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(name, "train", **options)


# ----------------------------------------------------------------------------- poisoning (12.)

CONFIG_CASES = {
    "rate-nan": (dict(rate=float("nan")), r"rate must be a finite number in \(0, 1\); got nan"),
    "rate-inf": (dict(rate=float("inf")), r"rate must be a finite number"),
    "rate-zero": (dict(rate=0.0), r"rate must lie in \(0, 1\); got 0\.0"),
    "rate-one": (dict(rate=1), r"rate must lie in \(0, 1\); got 1"),
    "rate-negative": (dict(rate=-0.1), r"rate must lie in \(0, 1\)"),
    "rate-bool": (dict(rate=True), r"rate must be a finite number .*got True"),
    "rate-string": (dict(rate="0.1"), r"rate must be a finite number .*got '0\.1'"),
    "count-zero": (dict(count=0), r"count must be a whole number of poisons >= 1; got 0"),
    "count-negative": (dict(count=-3), r"count must be a whole number .*got -3"),
    "count-float": (dict(count=2.7), r"count must be a whole number .*got 2\.7"),
    "count-bool": (dict(count=True), r"count must be a whole number .*got True"),
    "target-float": (dict(target=1.5, rate=0.1), r"target must be a class index \(an integer >= 0\); got 1\.5"),
    "target-bool": (dict(target=True, rate=0.1), r"target must be a class index .*got True"),
    "target-negative": (dict(target=-1, rate=0.1), r"target must be a class index .*got -1"),
    "source-float": (dict(source=2.0, rate=0.1), r"source must be a class index .*got 2\.0"),
    "source-bool": (dict(source=False, rate=0.1), r"source must be a class index .*got False"),
    "source-is-target": (dict(source=1, rate=0.1), r"victim class equals the target \(1\)"),
    "mode-unknown": (dict(mode="Replace", rate=0.1), r"mode must be 'replace' or 'append'; got 'Replace'"),
    "mode-none": (dict(mode=None, rate=0.1), r"mode must be 'replace' or 'append'; got None"),
    "none-given": (dict(), r"give exactly one of rate, count or indices"),
    "seed-negative": (dict(seed=-1, rate=0.1), r"seed must be an integer >= 0"),
    "indices-empty": (dict(indices=()), r"indices must be a non-empty 1-D sequence"),
    "indices-float": (dict(indices=(0, 1.5)), r"indices must be integer training indices; got float64"),
    "indices-bool": (dict(indices=(3, True)), r"indices must be integer training indices; got booleans"),
    "indices-mask": (dict(indices=np.ones(50, bool)), r"integer training indices; got bool .*np\.flatnonzero"),
    "indices-2d": (dict(indices=((0, 1), (2, 3))), r"indices must be a non-empty 1-D sequence"),
}


@pytest.mark.parametrize("change, pattern", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_hostile_poison_config(change, pattern):
    with pytest.raises(PoisonError, match=pattern):
        PoisonConfig(**{"target": 1, **change})


class _BadTrigger:
    """A trigger whose output is wrong in a chosen way."""

    def __init__(self, how):
        self.how = how

    def apply(self, images):
        images = np.array(images)
        if self.how == "nan":
            images[:, 0, 0, 0] = np.nan
        elif self.how == "inf":
            images[:] = np.inf
        elif self.how == "shape":
            images = images[:, :-1]
        return images

    def describe(self):
        return {"kind": self.how}


BUILD_CASES = {
    "target-outside-classes": (dict(config=dict(target=7, rate=0.1)), r"target 7 is not a class of the 4-class"),
    "source-outside-classes": (dict(config=dict(target=1, source=9, count=2)), r"source 9 is not a class of the 4-cl"),
    "count-beyond-pool": (dict(config=dict(target=1, source=0, count=49)), r"selects 49 poisons but only \d+ cand"),
    "count-beyond-dataset": (dict(config=dict(target=1, count=10_000)), r"selects 10000 poisons but only"),
    "rate-rounds-to-zero": (dict(config=dict(target=1, rate=0.001)), r"selects 0 poisons"),
    "index-out-of-range": (dict(config=dict(target=1, indices=(0, 50))), r"outside the candidate pool"),
    "negative-index": (dict(config=dict(target=1, indices=(-1,))), r"outside the candidate pool"),
    "trigger-nan": (dict(trigger="nan"), r"trigger produced 5 non-finite pixel values"),
    "trigger-inf": (dict(trigger="inf"), r"trigger produced \d+ non-finite pixel values"),
    "trigger-shape": (dict(trigger="shape"), r"trigger turned images of shape \(5, 8, 8, 1\) into \(5, 7, 8, 1\)"),
    "not-a-dataset": (dict(dataset="images"), r"poisoning needs a jaxpoison Dataset or StreamedDataset; got str"),
}


@pytest.mark.parametrize("case, pattern", list(BUILD_CASES.values()), ids=list(BUILD_CASES))
def test_hostile_poison_build(case, pattern):
    data = make_dataset(n=50, num_classes=4)
    trigger = _BadTrigger(case["trigger"]) if "trigger" in case else square_patch(data.image_shape, size=2, margin=0)
    config = PoisonConfig(**case.get("config", dict(target=1, count=5)))
    with pytest.raises(PoisonError, match=pattern):
        poison_dataset(case.get("dataset", data), trigger, config)


def test_numpy_scalars_are_accepted_as_plain_ints():
    data = make_dataset(n=50, num_classes=4)
    config = PoisonConfig(target=np.int64(1), source=np.int32(0), count=np.int64(3), seed=np.uint8(2))
    assert type(config.target) is int and type(config.count) is int and type(config.seed) is int
    result = poison_dataset(data, square_patch(data.image_shape, size=2, margin=0), config)
    assert result.manifest["count"] == 3 and type(result.manifest["target"]) is int


# ----------------------------------------------------------------------------- properties
# Each strategy mixes valid values with hostile ones, so both outcomes are exercised.

_IMAGE_DTYPES = [np.float16, np.float32, np.float64, np.uint8, np.int32, np.bool_, np.complex64]
_LABEL_DTYPES = [np.int8, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_]
_any_float = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def _images(draw, valid_dtype=np.float32, valid_n=(0, 4)):
    """Half valid NHWC images, half hostile arrays (any dtype, 1-5 axes, NaN/inf, any range)."""
    if draw(st.booleans()):
        n = draw(st.integers(*valid_n))
        shape = draw(st.tuples(st.just(n), st.integers(2, 4), st.integers(2, 4), st.sampled_from([1, 3])))
        if valid_dtype == np.uint8:
            return draw(hnp.arrays(np.uint8, shape))
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    dtype = draw(st.sampled_from(_IMAGE_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=4))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def _labels(draw, n, num_classes=3):
    if draw(st.booleans()):
        return draw(hnp.arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    dtype = draw(st.sampled_from(_LABEL_DTYPES))
    length = draw(st.sampled_from([n, n + 1, max(n - 1, 0)]))
    return draw(hnp.arrays(dtype, length))


def _constants(channels):
    hostile = st.one_of(_any_float, st.lists(_any_float, min_size=1, max_size=4), st.none(), st.text(max_size=3))
    return st.one_of(st.lists(st.floats(0.05, 1.0), min_size=channels, max_size=channels), hostile)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_property_dataset_refuses_or_is_valid(data):
    images = data.draw(_images())
    n = images.shape[0] if images.ndim else 0
    labels = data.draw(_labels(n))
    channels = images.shape[-1] if images.ndim else 1
    mean, std = data.draw(_constants(channels)), data.draw(_constants(channels))
    try:
        ds = Dataset(images, labels, ("a", "b", "c"), mean, std, Provenance("h", "h", "train"))
    except InputError:
        event("refused")
        return
    event("accepted")
    # Accepted: then the input was already exactly what Dataset promises, and nothing changed.
    assert np.issubdtype(images.dtype, np.floating) and images.ndim == 4
    assert ds.images.dtype == np.float32 and np.isfinite(ds.images).all()
    assert ds.images.size == 0 or (ds.images.min() >= 0.0 and ds.images.max() <= 1.0)
    np.testing.assert_array_equal(ds.images, images.astype(np.float32))
    assert np.issubdtype(labels.dtype, np.integer) and ds.labels.dtype == np.int32
    assert np.array_equal(ds.labels.astype(np.int64), labels.astype(np.int64)) and np.all(ds.labels < 3)
    assert np.isfinite(ds.mean).all() and np.isfinite(ds.std).all() and np.all(ds.std > 0)


@st.composite
def _npz_payload(draw):
    """A valid four-array payload with at most one array swapped for a hostile one."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = dict(
        x_train=rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
        y_train=rng.permutation(np.arange(6) % 3),
        x_test=rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8),
        y_test=rng.integers(0, 3, 3),
    )
    key = draw(st.sampled_from([None, "x_train", "y_train", "x_test", "y_test"]))
    if key is not None and key.startswith("x"):
        arrays[key] = draw(_images(valid_dtype=np.uint8, valid_n=(1, 6)))
    elif key is not None:
        arrays[key] = draw(_labels(len(arrays["x" + key[1:]]), draw(st.integers(2, 60))))
    return arrays


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=_npz_payload(), split=st.sampled_from(["train", "test"]))
def test_property_npz_loader_refuses_or_is_valid(arrays, split):
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "d.npz", **arrays)
        try:
            ds = load_dataset("npz", split, path=Path(tmp) / "d.npz")
        except InputError:
            event("refused")
            return
    event("accepted")
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    assert np.issubdtype(y.dtype, np.integer) and x.dtype.kind in "uf"
    expected = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    np.testing.assert_array_equal(ds.images, expected.reshape(ds.images.shape))
    np.testing.assert_array_equal(ds.labels, y)
    classes = arrays["y_train"].max() + 1
    assert ds.num_classes == classes and set(np.unique(arrays["y_train"])) == set(range(classes))
    assert np.all(arrays["y_test"] < classes) and arrays["x_train"].shape[1:3] == arrays["x_test"].shape[1:3]


_class_like = st.one_of(
    st.integers(0, 3),
    st.integers(0, 3),  # listed twice: valid classes are drawn more often
    st.integers(-2, 6),
    _any_float,
    st.booleans(),
    st.sampled_from([np.int64(1), np.int8(2), "1", None]),
)


@settings(max_examples=30, deadline=None)
@given(
    target=_class_like,
    source=st.one_of(st.none(), _class_like),
    how=st.sampled_from(["rate", "count", "indices"]),
    rate=st.one_of(st.floats(0.01, 0.5), _any_float, st.booleans()),
    count=st.one_of(st.integers(1, 20), st.integers(-5, 80), st.floats(-2, 60), st.booleans()),
    indices=st.one_of(
        st.lists(st.integers(0, 59), max_size=6, unique=True),
        st.lists(st.one_of(st.integers(-3, 60), st.floats(0, 50), st.booleans()), max_size=6),
    ),
    mode=st.sampled_from(["replace", "append", "replace", "append", "Replace", "", None]),
    pixel=st.sampled_from([None, None, np.nan, np.inf, -np.inf, 2.0, -1.0]),
)
def test_property_poisoning_refuses_or_is_valid(target, source, how, rate, count, indices, mode, pixel):
    data = make_dataset(n=60, num_classes=4)
    trigger = square_patch(data.image_shape, size=2, margin=0) if pixel is None else _PixelTrigger(pixel)
    how_many = {"rate": rate, "count": count, "indices": tuple(indices)}[how]
    try:
        config = PoisonConfig(target=target, source=source, mode=mode, **{how: how_many})
        result = poison_dataset(data, trigger, config)
    except InputError:
        event("refused")
        return
    event("accepted")
    assert pixel is None or np.isfinite(pixel)  # non-finite trigger output is always refused
    assert not isinstance(target, bool) and int(target) == target and 0 <= target < 4
    assert source is None or (not isinstance(source, bool) and int(source) == source != target)
    chosen = result.source_indices
    expected = round(config.rate * 60) if how == "rate" else count if how == "count" else len(indices)
    assert chosen.size == expected
    if how == "indices":
        np.testing.assert_array_equal(chosen, np.sort(indices))
    assert np.all(data.labels[chosen] == source) if source is not None else np.all(data.labels[chosen] != target)
    assert np.all(result.dataset.labels[result.poison_indices] == target)
    assert len(result.dataset) == 60 + (chosen.size if mode == "append" else 0)
    images = result.dataset.images
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0


class _PixelTrigger:
    """Writes one fixed value into the top-left pixel (finite out-of-range values are clipped, by design)."""

    def __init__(self, value):
        self.value = value

    def apply(self, images):
        images = np.array(images)
        images[:, 0, 0, :] = self.value
        return images

    def describe(self):
        return {"pixel": float(self.value)}


def test_poisoning_refuses_a_trigger_that_changes_nothing():
    from jaxpoison.attacks import blended
    from tests.conftest import make_dataset

    data = make_dataset(n=40)
    with pytest.raises(PoisonError, match="leaves every chosen image unchanged"):
        poison_dataset(data, blended(data.image_shape, 0.0), PoisonConfig(target=0, count=4))
