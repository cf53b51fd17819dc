"""The no-poison control: detectors run on the clean model, from a test image it gets wrong."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from jaxpoison.experiments.control import control_stage, misclassified_test_point
from jaxpoison.experiments.pipeline import prepare
from jaxpoison.training import predict_logits


def test_the_control_point_is_a_test_image_the_clean_model_gets_wrong(tiny_run):
    clean, test = tiny_run.clean, tiny_run.splits.test
    index, predicted = misclassified_test_point(clean, test)
    logits = predict_logits(clean, test)
    assert predicted == int(logits[index].argmax()) != int(test.labels[index])
    # Every earlier test image is classified correctly: it is the first mistake.
    assert np.array_equal(logits[:index].argmax(-1), test.labels[:index])
    right = np.flatnonzero(logits.argmax(-1) == test.labels)
    with pytest.raises(ValueError, match="misclassified"):
        misclassified_test_point(clean, test.subset(right))


def test_control_flags_are_all_false_positives_and_rerun_reuses_them(tiny_run, tmp_path):
    # A copy of the shared run: the control's stages must not appear in other tests' run directory.
    shutil.copytree(tiny_run.store.root, tmp_path / "run")
    prepared = prepare(tiny_run.config, tmp_path / "run", progress=False)
    methods = ("delta_influence", "spectral")
    records = control_stage(prepared, methods, progress=False)
    n = len(tiny_run.splits.train)
    for method in methods:
        record = records[method]
        flagged = np.load(prepared.store.path(f"control:detect:{method}") / "flagged.npy")
        assert record["n_flagged"] == flagged.size and record["n_poisons"] == 0
        assert record["tpr"] is None and record["auroc"] is None
        assert record["fpr"] == pytest.approx(flagged.size / n)
    point = records["delta_influence"]["test_point"]
    assert point["predicted"] != point["true_label"]  # the wrong prediction plays the target
    before = len(prepared.store.events)
    again = control_stage(prepared, methods, progress=False)
    assert again == records
    assert all(status == "reused" for _, status in prepared.store.events[before:])
