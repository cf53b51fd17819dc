"""On-disk format parsers: IDX, CIFAR binary, npz, image folders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from jaxpoison.data import DatasetError, load_dataset, read_cifar_binary, read_idx, write_cifar_binary, write_idx
from jaxpoison.data.formats import load_image_folder, read_npz_arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}"), images)


def test_idx_header_is_parsed_by_hand(tmp_path):
    # A 2x3 int32 big-endian array written byte by byte, independent of write_idx.
    raw = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    raw += b"".join(v.to_bytes(4, "big", signed=True) for v in [1, -2, 3, 4, 5, -6])
    (tmp_path / "a.idx").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), [[1, -2, 3], [4, 5, -6]])


def test_idx_truncated_file_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 28, 28), np.uint8))
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "x")


def test_idx_truncated_gzip_is_a_clear_error(tmp_path):
    payload = gzip.compress(bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big") + bytes(1000))
    (tmp_path / "x.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_idx(tmp_path / "x.gz")


def test_idx_bad_magic_and_missing_file(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "absent")


@pytest.mark.parametrize("label_bytes", [1, 2])
def test_cifar_binary_parser(tmp_path, label_bytes):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labels = np.array([7, 0, 9])
    # Hand-build the records: label byte(s), then R plane, G plane, B plane.
    records = []
    for img, lab in zip(images, labels, strict=True):
        head = bytes([lab]) if label_bytes == 1 else bytes([lab // 10, lab])
        records.append(head + img.transpose(2, 0, 1).tobytes())
    (tmp_path / "b.bin").write_bytes(b"".join(records))
    got_images, got_labels = read_cifar_binary(tmp_path / "b.bin", label_bytes)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_cifar_binary_truncated(tmp_path):
    write_cifar_binary(tmp_path / "b.bin", np.zeros((2, 32, 32, 3), np.uint8), np.array([1, 2]), 1)
    (tmp_path / "b.bin").write_bytes((tmp_path / "b.bin").read_bytes()[:-7])
    with pytest.raises(DatasetError, match="truncated"):
        read_cifar_binary(tmp_path / "b.bin", 1)


def test_cifar10_loads_from_binary_directory(tmp_path, no_local_data):
    root = no_local_data / "cifar-10-batches-bin"
    root.mkdir()
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_binary(root / name, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 4), 1)
    train = load_dataset("cifar10", "train")
    test = load_dataset("cifar10", "test")
    assert len(train) == 20 and len(test) == 4
    assert train.image_shape == (32, 32, 3) and train.class_names[8] == "ship"
    assert train.provenance.source == "cifar-binary"
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match="unpickling"):
        read_npz_arrays(tmp_path / "bad.npz")


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (10, 6, 6), dtype=np.uint8),
             y_train=np.arange(10) % 3, x_test=rng.integers(0, 256, (4, 6, 6), dtype=np.uint8),
             y_test=np.arange(4) % 3)  # fmt: skip
    ds = load_dataset("npz", "test", path=tmp_path / "d.npz")
    assert ds.image_shape == (6, 6, 1) and ds.num_classes == 3 and len(ds) == 4
    with pytest.raises(DatasetError, match="lacks arrays"):
        np.savez(tmp_path / "e.npz", x_train=np.zeros((2, 2, 2)))
        load_dataset("npz", "train", path=tmp_path / "e.npz")


def test_image_folder_resizes_and_labels(tmp_path):
    from PIL import Image

    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (tmp_path / f"class{c}").mkdir()
        for i in range(2):
            Image.new("RGB", (40 + 10 * i, 30), colour).save(tmp_path / f"class{c}" / f"{i}.png")
    images, labels, names = load_image_folder(tmp_path, 16)
    assert images.shape == (4, 16, 16, 3) and names == ["class0", "class1"]
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    assert images[0, 8, 8, 0] == 255 and images[3, 8, 8, 2] == 255
