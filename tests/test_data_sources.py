"""Named datasets: digits, the IDX search path, TFDS, and the errors for missing data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxpoison.data import (
    Dataset,
    DatasetError,
    Provenance,
    dataset_location,
    load_dataset,
    load_splits,
    split_train_validation,
    write_idx,
)
from jaxpoison.data.sources import load_tfds


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = load_splits("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert train.image_shape == (8, 8, 1) and train.num_classes == 10
    # Each class keeps its share in the test split (stratified), within one example.
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # Disjoint: no test image appears in train.
    train_rows = {row.tobytes() + bytes([lab]) for row, lab in zip(train.images, train.labels, strict=True)}
    overlap = sum(row.tobytes() + bytes([lab]) in train_rows for row, lab in zip(test.images, test.labels, strict=True))
    assert overlap <= 5  # digits has a handful of exact duplicate images; a wrong split would share ~80%
    assert train.content_hash == load_dataset("digits", "train").content_hash


def _write_fake_mnist(directory, n_train=12, n_test=5):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))


def test_fashion_mnist_from_jaxpoison_data(no_local_data):
    _write_fake_mnist(no_local_data / "fashion_mnist")
    train, test = load_splits("fashion_mnist")
    assert (len(train), len(test)) == (12, 5)
    assert train.image_shape == (28, 28, 1) and train.class_names[9] == "Ankle boot"
    assert train.provenance.source == "idx"
    assert dataset_location("fashion_mnist") == str(no_local_data / "fashion_mnist")


def test_fashion_mnist_from_debian_directory(tmp_path, no_local_data):
    from jaxpoison.data import sources

    _write_fake_mnist(sources.DEBIAN_DATASETS / "fashion-mnist", n_train=7)
    assert len(load_dataset("fashion_mnist")) == 7


def test_mismatched_idx_pair_is_refused(no_local_data):
    d = no_local_data / "mnist"
    _write_fake_mnist(d)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="do not pair up"):
        load_dataset("mnist")


def test_missing_dataset_says_how_to_get_it(no_local_data):
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion_mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "JAXPOISON_DATA" in message and "tfds-prepare" in message
    with pytest.raises(DatasetError, match="binary version"):
        load_dataset("cifar100")
    assert dataset_location("cifar10") is None


def test_unknown_names_are_clear_errors():
    with pytest.raises(DatasetError, match=r"unknown dataset 'cifar11'.*cifar10"):
        load_dataset("cifar11")
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("digits", "validation")


def test_tfds_path_under_mock_data(no_local_data):
    with tfds.testing.mock_data(num_examples=9):
        images, labels, _ = load_tfds("cifar10", "train")
        assert images.shape == (9, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (9,)
        # With no local files the named loader falls through to TFDS.
        test = load_dataset("cifar10", "test")
        assert len(test) == 9 and test.provenance.source == "tfds"
        mnist = load_dataset("mnist", "train")
        assert mnist.image_shape == (28, 28, 1)


def test_dataset_validation_errors():
    ok = dict(
        images=np.zeros((4, 8, 8, 1), np.float32),
        labels=np.zeros(4, np.int32),
        class_names=("a", "b"),
        mean=[0.5],
        std=[0.5],
        provenance=Provenance("t", "t", "train"),
    )
    Dataset(**ok)
    cases = [
        (dict(images=np.zeros((4, 8, 8), np.float32)), "4-D NHWC"),
        (dict(images=np.zeros((4, 8, 8, 1), np.uint8)), "floating point"),
        (dict(images=np.full((4, 8, 8, 1), 2.0, np.float32)), r"\[0, 1\]"),
        (dict(labels=np.array([0, 1, 2, 0])), r"labels must lie in \[0, 2\)"),
        (dict(labels=np.zeros(3, np.int32)), "one label per image"),
        (dict(mean=[0.5, 0.5]), "one value per channel"),
        (dict(std=[0.0]), "std must be positive"),
    ]
    for change, pattern in cases:
        with pytest.raises(DatasetError, match=pattern):
            Dataset(**{**ok, **change})


def test_subset_and_validation_split(tiny_dataset):
    sub = tiny_dataset.subset([3, 1])
    np.testing.assert_array_equal(sub.labels, tiny_dataset.labels[[3, 1]])
    with pytest.raises(DatasetError, match="subset indices"):
        tiny_dataset.subset([len(tiny_dataset)])
    train, val = split_train_validation(tiny_dataset, 0.25, seed=0)
    assert len(train) + len(val) == len(tiny_dataset)
    joined = np.sort(np.concatenate([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]))
    np.testing.assert_array_equal(joined, np.sort(tiny_dataset.images[:, 0, 0, 0]))
