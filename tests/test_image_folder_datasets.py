"""ImageNet-10 and RAF-DB from small generated folder trees in their standard layouts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxpoison.data import DatasetError, dataset_location, load_dataset, missing_message
from jaxpoison.data.sources import IMAGENET10_WNIDS, RAFDB_CLASSES


def _write(path, size, value, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((*size, 3), value, np.uint8)
    array[0, 0] = (255 - value, 0, value)  # not flat, so JPEG and resizing have something to do
    Image.fromarray(array).save(path, format=fmt)


def imagenet10_tree(root, per_class=(2, 1)):
    for split, count in zip(("train", "val"), per_class, strict=True):
        for c, wnid in enumerate(IMAGENET10_WNIDS):
            for i in range(count):
                _write(root / split / wnid / f"{wnid}_{i}.JPEG", (20 + i, 30), 10 * c + 5, "JPEG")


def test_imagenet10_reads_the_wnid_folders_in_class_order(no_local_data):
    imagenet10_tree(no_local_data / "imagenet10")
    assert dataset_location("imagenet10") == str(no_local_data / "imagenet10")
    train = load_dataset("imagenet10", "train", image_size=16)
    test = load_dataset("imagenet10", "test", image_size=16)
    assert train.image_shape == (16, 16, 3) and len(train) == 20 and len(test) == 10
    assert train.class_names[0] == "king penguin" and train.num_classes == 10
    np.testing.assert_array_equal(np.bincount(train.labels), [2] * 10)
    # class c was written with grey level 10c + 5: the labels follow the wnid order
    np.testing.assert_allclose(train.images[train.labels == 3][:, 8, 8, 0] * 255, 35, atol=3)
    assert load_dataset("imagenet10", "train").image_shape == (224, 224, 3)  # the default size


def test_imagenet10_takes_another_class_list(no_local_data):
    root = no_local_data / "imagenet10"
    for split in ("train", "val"):
        for wnid in ("n01440764", "n02102040"):
            _write(root / split / wnid / "a.png", (12, 12), 100, "PNG")
    data = load_dataset("imagenet10", "train", image_size=8, classes=["n01440764", "n02102040"])
    assert data.class_names == ("n01440764", "n02102040") and len(data) == 2
    with pytest.raises(DatasetError, match="not available"):
        load_dataset("imagenet10", "train", image_size=8)  # the default ten are not there
    with pytest.raises(DatasetError, match="image_size must be a positive integer"):
        load_dataset("imagenet10", "train", image_size=0)


def rafdb_tree(root, basic=True):
    base = root / "basic" if basic else root
    lines = []
    for split, count in (("train", 7), ("test", 3)):
        for i in range(count):
            name = f"{split}_{i + 1:05d}.jpg" if split == "train" else f"{split}_{i + 1:04d}.jpg"
            label = i % 7 + 1
            lines.append(f"{name} {label}")
            _write(base / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), (100, 100), 30 * label, "JPEG")
    (base / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("basic", [True, False])
def test_rafdb_reads_the_split_list_and_aligned_faces(no_local_data, basic):
    rafdb_tree(no_local_data / "raf_db", basic=basic)
    train = load_dataset("raf_db", "train")
    test = load_dataset("raf_db", "test", image_size=48)
    assert train.image_shape == (100, 100, 3) and len(train) == 7 and test.image_shape == (48, 48, 3)
    assert train.class_names == RAFDB_CLASSES and train.labels.tolist() == list(range(7))
    assert test.labels.tolist() == [0, 1, 2]
    np.testing.assert_allclose(train.images[4, 50, 50, 0] * 255, 150, atol=3)  # label 5 = Sadness, grey 150


def test_rafdb_names_the_missing_face_and_bad_lines(no_local_data):
    base = rafdb_tree(no_local_data / "raf_db")
    (base / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
    with pytest.raises(DatasetError, match=r"lists train_00003.jpg but .*train_00003_aligned.jpg does not exist"):
        load_dataset("raf_db", "train")
    (base / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DatasetError, match=r"list_patition_label.txt:1: expected '<image name> <label 1-7>'"):
        load_dataset("raf_db", "train")


def test_missing_image_datasets_name_the_files_to_put_where(no_local_data):
    wanted = {"imagenet10": ("imagenet10/train/<wnid>/*.JPEG", "n02056570  king penguin"),
              "raf_db": ("basic/EmoLabel/list_patition_label.txt", "train_00001_aligned.jpg")}
    for name, needles in wanted.items():
        with pytest.raises(DatasetError) as error:
            load_dataset(name, "train")
        assert all(n in str(error.value) for n in needles) and missing_message(name) in str(error.value)
        assert dataset_location(name) is None
