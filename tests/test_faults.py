"""Faults in a run directory: every damaged artifact is detected, redone, and the report equals an undamaged run's.

One finished tiny run is copied per case; the case damages one artifact the way a full disk,
a killed copy or a careless hand would (truncated, emptied, replaced by valid-looking
content), then reruns. The stage that owns the artifact must be recomputed, the note must
name the file, and the detection and unlearning results must equal the undamaged run's.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest

from jaxpoison.errors import RecoveryWarning
from jaxpoison.experiments import get_preset, run_pipeline

TINY = "digits-badnet-tiny"


@pytest.fixture(scope="module")
def finished(tiny_run, tmp_path_factory):
    """A finished tiny run and its report (detection and unlearning results, timings left out)."""
    root = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(tiny_run.prepared.store.root, root)
    report = run_pipeline(get_preset(TINY), root, progress=False)
    return root, _results(report)


def _results(report: dict) -> dict:
    """What a run found: everything but wall-clock times (``seconds`` fields and Δ-Influence's ``phases``)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k and k != "phases"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip({k: report[k] for k in ("victim", "test_point", "detection", "unlearning", "data")})


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _five_valid_indices(path):
    np.save(path, np.arange(5, dtype=np.int64))  # a well-formed npy that says something else


def _zero_images(path):
    np.save(path, np.zeros_like(np.load(path)))


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# (stage, how to find the artifact inside the stage directory, damage)
CASES = [
    ("detect:delta_influence", lambda d: d / "flagged.npy", _five_valid_indices),
    ("detect:delta_influence", lambda d: d / "scores.npy", _truncate),
    ("detect:delta_influence", lambda d: d / "extra.npz", _truncate),
    ("detect:delta_influence", lambda d: d / "detection.json", _empty),
    ("detect:ekfac", lambda d: d / "stage.json", _truncate),
    ("test_point", lambda d: d / "images.npy", _zero_images),
    ("poison", lambda d: d / "poisons.npz", _truncate),
    ("victim", lambda d: _largest(d / "model"), _flip_one_byte),  # an Orbax/TensorStore data file
    ("victim", lambda d: d / "model" / "_METADATA", _truncate),
    ("factors", lambda d: d / "factors" / "factors.json", _empty),
    ("factors", lambda d: _largest(d / "factors" / "blocks"), _truncate),
]


@pytest.mark.parametrize("stage, locate, damage", CASES, ids=[f"{s}-{d.__name__.strip('_')}" for s, _, d in CASES])
def test_a_damaged_artifact_is_redone_and_the_report_equals_an_undamaged_runs(finished, tmp_path, stage, locate,
                                                                                damage):  # fmt: skip
    root, expected = finished
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    directory = copy / "stages" / stage.replace(":", "__")
    artifact = locate(directory)
    damage(artifact)

    with pytest.warns(RecoveryWarning) as notes:
        report = run_pipeline(get_preset(TINY), copy, progress=False)

    note = " ".join(str(w.message) for w in notes)
    assert f"stage {stage} is damaged" in note and "recomputing" in note
    if artifact.name != "stage.json":
        assert artifact.relative_to(directory).as_posix() in note  # the note names the file
    assert report["stages"][stage]["this_run"] == "computed"
    assert _results(report) == expected
    # the report on disk agrees with itself: its detection table and the flags unlearning used
    saved = json.loads((copy / "report.json").read_text())
    flagged = np.load(directory.parent / "detect__delta_influence" / "flagged.npy")
    assert saved["detection"]["delta_influence"]["n_flagged"] == flagged.size


def test_the_issue_scenario_flags_replaced_on_disk_no_longer_contradict_the_report(finished, tmp_path):
    """Five valid indices written over Δ-Influence's flags: the table and the unlearning rows must still agree."""
    root, expected = finished
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    np.save(copy / "stages" / "detect__delta_influence" / "flagged.npy", np.arange(5))
    with pytest.warns(RecoveryWarning, match="flagged.npy changed since the stage finished"):
        report = run_pipeline(get_preset(TINY), copy, progress=False)
    assert report["detection"]["delta_influence"]["n_flagged"] == expected["detection"]["delta_influence"]["n_flagged"]
    assert [r["psr"] for r in report["unlearning"]] == [r["psr"] for r in expected["unlearning"]]


def test_an_intact_rerun_reuses_everything_and_reports_no_damage(finished, tmp_path):
    root, expected = finished
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)  # nothing to recover
        report = run_pipeline(get_preset(TINY), copy, progress=False)
    assert all(v["this_run"] == "reused" for v in report["stages"].values())
    assert _results(report) == expected


def test_kill_9_during_factor_fitting_resumes_from_the_partial_sums(finished, tmp_path):
    """``jaxpoison run`` killed with SIGKILL inside the factor fit: the rerun uses the sums already on disk."""
    root, expected = finished
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "stages" / "factors")  # the factors were never fitted in this copy
    # Die on the first batch of the second (eigenvalue) pass: the covariance pass is complete and saved by then.
    killer = textwrap.dedent(f"""
        import os, signal
        from jaxpoison.influence import kfac

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        kfac._lambda_step = die
        from jaxpoison.cli import main
        main(["run", {TINY!r}, "--out", {str(copy)!r}, "--no-progress"])
    """)
    killed = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    factors = copy / "stages" / "factors"
    assert not (factors / "stage.json").exists()
    assert (factors / "partial" / "covariance").is_dir()  # the interrupted stage kept its partial sums

    report = run_pipeline(get_preset(TINY), copy, progress=False)
    record = json.loads((factors / "stage.json").read_text())["record"]
    assert record["resumed"] and record["resumed"].get("covariance", 0) > 0  # the saved sums were used
    assert "lambda" not in record["resumed"]  # that pass never saved anything
    assert not (factors / "partial").exists()  # superseded by the finished factors
    assert _results(report) == expected


@pytest.mark.parametrize("damage", [_truncate, _empty], ids=["truncated", "emptied"])
def test_a_damaged_training_checkpoint_is_dropped_and_its_epoch_retrained(tmp_path, damage):
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.training import adam_recipe, train
    from tests.conftest import make_dataset

    data = make_dataset(n=96)
    model = to_functional(create_model("mlp", data.image_shape, data.num_classes), data.mean, data.std)
    recipe = adam_recipe(epochs=3, batch_size=32)
    straight = train(model, data, recipe, seed=1, checkpoint_dir=str(tmp_path / "ck"), progress=False)
    for path in (tmp_path / "ck" / "3").rglob("*"):  # every file of the newest epoch's step
        if path.is_file() and path.stat().st_size:
            damage(path)

    with pytest.warns(RecoveryWarning, match=r"checkpoint step 3 in .* is damaged .*resuming from the step before"):
        again = train(model, data, recipe, seed=1, checkpoint_dir=str(tmp_path / "ck"), progress=False)

    assert again.step_losses.size == len(data) // 32  # only the lost epoch ran again
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_another_models_checkpoints_are_refused_and_left_untouched(tmp_path):
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.training import CheckpointError, adam_recipe, train
    from tests.conftest import make_dataset

    data = make_dataset(n=64)
    recipe = adam_recipe(epochs=1, batch_size=32)
    small = to_functional(create_model("mlp", data.image_shape, data.num_classes, hidden=(8,)), data.mean, data.std)
    train(small, data, recipe, seed=0, checkpoint_dir=str(tmp_path), progress=False)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    wide = to_functional(create_model("mlp", data.image_shape, data.num_classes, hidden=(16,)), data.mean, data.std)
    with pytest.raises(CheckpointError, match="holds another model's arrays"):
        train(wide, data, recipe, seed=0, checkpoint_dir=str(tmp_path), progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing deleted
