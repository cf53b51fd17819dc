"""The command line: listing datasets, training end to end, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxpoison.cli import main


def test_datasets_lists_every_dataset_and_availability(capsys, no_local_data):
    assert main(["datasets", "--how", "fashion_mnist"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagenette", "npz"):
        assert name in out
    assert "scikit-learn (bundled)" in out
    assert "not available" in out and "apt-get install dataset-fashion-mnist" in out


def test_train_writes_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "6", "--batch-size", "32",
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 6 and len(metrics["history"]) == 6
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["train_seconds"] > 0 and metrics["num_params"] > 0
    assert metrics["environment"]["jax"] and metrics["train_data"]["hash"]
    assert "test accuracy" in capsys.readouterr().out
    # Running again finds the finished checkpoints and does no more training.
    assert main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "6", "--batch-size", "32",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    again = json.loads((out / "metrics.json").read_text())
    assert again["test_accuracy"] == metrics["test_accuracy"]


def test_unavailable_dataset_exits_with_instructions(tmp_path, capsys, no_local_data):
    code = main(["train", "--dataset", "cifar10", "--model", "resnet18", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "not available" in err and "binary version" in err


def test_unknown_names_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "digitz", "--model", "cnn", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "invalid choice: 'digitz'" in capsys.readouterr().err


def test_npz_with_wrong_image_shape_is_a_clear_error(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 5), np.uint8), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 5), np.uint8), y_test=np.zeros(2, np.int64))  # fmt: skip
    code = main(["train", "--dataset", "npz", "--data-path", str(tmp_path / "d.npz"), "--model", "mlp",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "4-D NHWC" in capsys.readouterr().err


def test_poison_writes_npz_and_manifest_that_load_back(tmp_path, capsys):
    from jaxpoison.data import load_dataset

    out = tmp_path / "p"
    args = ["poison", "--dataset", "digits", "--attack", "square", "--patch-size", "2", "--margin", "0", "--color", "1",
            "--target", "0", "--rate", "0.02", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == round(0.02 * 1437) and manifest["target"] == 0
    poisoned = load_dataset("npz", "train", path=out / "poisoned.npz")
    with np.load(out / "poisoned.npz") as f:
        idx = f["poison_indices"]
    assert idx.size == manifest["count"] and np.all(poisoned.labels[idx] == 0)
    assert np.all(poisoned.images[idx, -2:, -2:] == 1.0)
    assert main(args) == 2 and "--force" in capsys.readouterr().err  # refuses to overwrite
    blended_args = ["poison", "--dataset", "digits", "--attack", "blended", "--epsilon", "1.5", "--target", "1",
                    "--count", "5", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(blended_args) == 2 and "[0, 1]" in capsys.readouterr().err
