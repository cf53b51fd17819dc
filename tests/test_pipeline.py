"""The staged run: end to end on the tiny preset, resume, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxpoison.cli import main
from jaxpoison.errors import RecoveryWarning
from jaxpoison.experiments import (
    ConfigError,
    RunDirectoryError,
    RunStore,
    apply_overrides,
    from_dict,
    get_preset,
    run_pipeline,
    to_dict,
)
from jaxpoison.experiments import pipeline as pipeline_module


@pytest.fixture(scope="module")
def tiny_report(tiny_run):
    root = tiny_run.prepared.store.root
    report = run_pipeline(tiny_run.prepared.config, root, progress=False)
    return root, report


def test_pipeline_end_to_end_on_the_tiny_preset(tiny_report):
    root, report = tiny_report
    assert report["victim"]["psr"] > 0.5
    detection = report["detection"]["delta_influence"]
    assert detection["tpr"] >= 0.9
    rows = {(r["detector"], r["unlearner"]): r for r in report["unlearning"]}
    assert set(rows) == {("delta_influence", "eu"), ("delta_influence", "cf")}
    assert rows[("delta_influence", "eu")]["psr"] <= 0.05
    for name in ("report.json", "report.md", "plots/roc.png", "plots/delta_by_transform.png"):
        assert (root / name).is_file(), name
    markdown = (root / "report.md").read_text()
    assert "| Δ-Influence | eu |" in markdown and "## Detection" in markdown
    saved = json.loads((root / "report.json").read_text())
    assert saved["config"] == to_dict(get_preset("digits-badnet-tiny"))
    assert set(saved["stages"]) >= {"clean", "poison", "victim", "test_point", "factors", "detect:delta_influence"}


def test_rerun_reuses_every_stage_and_resumes_after_an_interruption(tiny_report, monkeypatch):
    root, report = tiny_report
    config = get_preset("digits-badnet-tiny")
    calls = []
    real = pipeline_module.run_unlearner

    def counting(prepared, method, flagged, **kw):
        calls.append(method)
        return real(prepared, method, flagged, **kw)

    monkeypatch.setattr(pipeline_module, "run_unlearner", counting)
    again = run_pipeline(config, root, progress=False)
    assert calls == []
    assert all(v["this_run"] == "reused" for v in again["stages"].values())
    assert again["unlearning"] == report["unlearning"]

    # An interrupted stage leaves no stage.json: only it is redone.
    (root / "stages" / "unlearn__delta_influence__cf" / "stage.json").unlink()
    resumed = run_pipeline(config, root, progress=False)
    assert calls == ["cf"]
    computed = [k for k, v in resumed["stages"].items() if v["this_run"] == "computed"]
    assert computed == ["unlearn:delta_influence:cf"]

    # A crash inside a stage: the stage is left unfinished, the earlier ones stay.
    def crash(*a, **kw):
        raise RuntimeError("simulated interruption")

    (root / "stages" / "unlearn__delta_influence__eu" / "stage.json").unlink()
    monkeypatch.setattr(pipeline_module, "run_unlearner", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        run_pipeline(config, root, progress=False)
    assert not (root / "stages" / "unlearn__delta_influence__eu" / "stage.json").exists()
    assert (root / "stages" / "victim" / "stage.json").exists()


def test_changing_one_unlearners_settings_reruns_only_that_unlearner(tiny_report, tmp_path, monkeypatch):
    root, _ = tiny_report
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    config = get_preset("digits-badnet-tiny")
    run_pipeline(config, copy, progress=False)  # finish whatever another test left interrupted
    slower_cf = apply_overrides(config, ["unlearning.cf.learning_rate=0.02", "unlearning.ssd.alphas=5"])
    calls = []
    real = pipeline_module.run_unlearner

    def counting(prepared, method, flagged, **kw):
        calls.append(method)
        return real(prepared, method, flagged, **kw)

    monkeypatch.setattr(pipeline_module, "run_unlearner", counting)
    run_pipeline(slower_cf, copy, force=True, progress=False)
    assert calls == ["cf"]  # EU's retrain does not depend on CF's (or SSD's) settings
    u = slower_cf.unlearning
    assert pipeline_module.unlearner_settings(u, "eu") == {}
    assert pipeline_module.unlearner_settings(u, "cf")["cf"]["learning_rate"] == 0.02
    assert "ssd" not in pipeline_module.unlearner_settings(u, "cf")
    assert "cf_short_epochs" not in pipeline_module.unlearner_settings(u, "cf")  # only cf_short reads it
    assert pipeline_module.unlearner_settings(u, "scrub")["scrub_budget"] == 0.1
    assert pipeline_module.unlearner_settings(u, "scrub")["selection"] == "clean"  # selection changes SCRUB's result
    assert "selection" not in pipeline_module.unlearner_settings(u, "cf")
    with pytest.raises(ValueError, match="unknown unlearning method"):
        pipeline_module.unlearner_settings(u, "forget")


def test_overrides_and_their_errors():
    config = apply_overrides(get_preset("digits-badnet-tiny"),
                             ["attack.rate=0.05", "detection.delta.n_tol=2", "unlearning.methods=eu,ssd",
                              "data.train_size=none", "victim.recipe.flip=true"])  # fmt: skip
    assert config.attack.rate == 0.05 and config.detection.delta.n_tol == 2
    assert config.unlearning.methods == ("eu", "ssd") and config.data.train_size is None and config.victim.recipe.flip
    assert from_dict(type(config), to_dict(config)) == config
    for bad, match in (("attack.nope=1", "unknown key"), ("nope.rate=1", "unknown section"),
                       ("attack.rate=abc", "attack.rate"), ("attack.rate", "KEY=VALUE"),
                       ("unlearning.methods=eu,magic", "unknown entries"), ("detection.delta.n_tol=60", "n_tol"),
                       ("attack=1", "section"), ("detection.test_points=0", "at least 1")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            apply_overrides(get_preset("digits-badnet-tiny"), [bad])
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("cifar-everything")
    with pytest.raises(ConfigError, match="one target test image"):
        apply_overrides(get_preset("fmnist-brew"), ["detection.test_points=3"])


def test_run_directory_guards(tmp_path):
    config = to_dict(get_preset("digits-badnet-tiny"))
    RunStore(tmp_path / "a", config).close()
    (tmp_path / "a" / "report.json").write_text("{}")  # a finished run
    other = to_dict(apply_overrides(get_preset("digits-badnet-tiny"), ["seed=1"]))
    with pytest.raises(RunDirectoryError, match="another run"):
        RunStore(tmp_path / "a", other)
    RunStore(tmp_path / "a", other, force=True).close()
    # A run that stopped before its report: the corrected command takes the directory over.
    RunStore(tmp_path / "c", config).close()
    with pytest.warns(RecoveryWarning, match="unfinished run of another configuration; taking it over"):
        RunStore(tmp_path / "c", other).close()
    assert json.loads((tmp_path / "c" / "run.json").read_text())["config"] == other
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirectoryError, match="not empty"):
        RunStore(tmp_path / "b", config)
    assert (tmp_path / "b" / "thesis.tex").read_text() == "precious"


def test_cli_bad_input(tmp_path, capsys, tiny_report):
    root, _ = tiny_report
    assert main(["run", "no-such-preset", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["run", "digits-badnet-tiny", "--set", "attack.colour=red", "--out", str(tmp_path / "x")]) == 2
    assert "unknown key" in capsys.readouterr().err
    flagged = tmp_path / "flagged.txt"
    np.savetxt(flagged, [1, 2, 10**7], fmt="%d")
    assert main(["unlearn", "--run", str(root), "--method", "eu", "--flagged", str(flagged), "--no-progress"]) == 2
    assert "outside the training set" in capsys.readouterr().err
    assert main(["detect", "--method", "magic", "--run", str(root)]) == 2
    assert "unknown detector" in capsys.readouterr().err
    assert main(["detect", "--method", "ekfac", "--run", str(tmp_path)]) == 2
    assert "not a jaxpoison run directory" in capsys.readouterr().err


def _stage_records(run) -> dict:
    """``{stage directory: parsed stage.json}`` of a run directory."""
    return {p.parent.name: json.loads(p.read_text()) for p in (run / "stages").glob("*/stage.json")}


def test_cli_detect_adds_a_detector_to_an_existing_run(tiny_report, tmp_path):
    root, _ = tiny_report
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    assert main(["detect", "--method", "spectral_reference", "--run", str(copy), "--no-progress"]) == 0
    records = json.loads((copy / "detection.json").read_text())
    assert (copy / "plots" / "roc_detect.png").is_file()
    # Only the added detector's stage was computed: every earlier stage.json is untouched
    # (a recomputed stage would carry a new stage_seconds), and exactly one stage is new.
    old_stages, new_stages = _stage_records(root), _stage_records(copy)
    assert set(new_stages) - set(old_stages) == {"detect__spectral_reference"}
    assert {name: new_stages[name] for name in old_stages} == old_stages
    record = records["spectral_reference"]
    assert record == new_stages["detect__spectral_reference"]["record"]
    # Its metrics agree with the flags and scores it saved and with the true poisons.
    stage = copy / "stages" / "detect__spectral_reference"
    flagged, scores = np.load(stage / "flagged.npy"), np.load(stage / "scores.npy")
    with np.load(copy / "stages" / "poison" / "poisons.npz") as saved:
        poisons, n_train = saved["indices"], saved["labels"].size
    assert scores.shape == (n_train,)
    np.testing.assert_array_equal(flagged, np.flatnonzero(scores > 7.0))  # the reference rule, both thresholds 7
    hits = np.intersect1d(flagged, poisons).size
    assert (record["n_flagged"], record["n_poisons"]) == (flagged.size, poisons.size)
    assert (record["n_true_positives"], record["n_false_positives"]) == (hits, flagged.size - hits)
    assert record["tpr"] == pytest.approx(hits / poisons.size)
    assert record["precision"] == pytest.approx(hits / flagged.size if flagged.size else 0.0)
    assert record["fpr"] == pytest.approx((flagged.size - hits) / (n_train - poisons.size))
    assert record["auroc"] == pytest.approx(roc_auc_score(np.isin(np.arange(n_train), poisons), scores))
    victim = json.loads((copy / "stages" / "victim" / "stage.json").read_text())
    assert victim == json.loads((root / "stages" / "victim" / "stage.json").read_text())  # reused, not retrained


def test_selection_chooses_the_pipelines_poisons(tmp_path, tiny_run):
    from jaxpoison.experiments.pipeline import prepare
    from jaxpoison.selection import hfe_selection

    config = apply_overrides(
        get_preset("digits-badnet-tiny"),
        ["selection=hfe", "detection.methods=spectral", "unlearning.detectors=spectral"],
    )
    prepared = prepare(config, tmp_path / "hfe", progress=False)
    poisoning = prepared.poisoning
    expected = hfe_selection(prepared.splits.train, poisoning.trigger, poisoning.target, config.attack.rate)
    np.testing.assert_array_equal(poisoning.poison_indices, expected.indices)
    assert prepared.store.record("poison")["selection"] == "hfe"
    # a selection method keys the poison stage apart; the default RS keeps the plain random draw
    assert tiny_run.prepared.keys["poison"] != prepared.keys["poison"]
    assert to_dict(get_preset("digits-badnet-tiny"))["selection"] == "rs"
    for bad, match in (("selection=magic", "selection must be one of"), ("attack.source=3", "all-to-one")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(config, [bad])


def test_unlearning_table_names_cf_with_a_reset_head():
    from jaxpoison.experiments.report import unlearning_table

    rows = [
        {"detector": "delta_influence", "unlearner": "cf", "psr": 0.093, "clean_accuracy": 0.92,
         "info": {"reset_head": False}},
        {"detector": "delta_influence", "unlearner": "cf_reset", "psr": 0.019, "clean_accuracy": 0.9087,
         "info": {"reset_head": True}},
    ]  # fmt: skip
    lines = unlearning_table(rows, max_psr=0.05).splitlines()
    assert "| cf | 0.093 |" in lines[2] and "✗" in lines[2]
    assert "| cf_reset | 0.019 |" in lines[3] and "✓" in lines[3]


def test_fashion_mnist_presets_continue_with_a_reset_head_and_the_demo_does_not():
    for name in ("fmnist-badnet", "fmnist-blended", "fmnist-smooth", "fmnist-brew"):
        methods = get_preset(name).unlearning.methods
        assert "cf" in methods and "cf_reset" in methods, name  # both CF rows, side by side
    assert "cf_reset" not in get_preset("fmnist-badnet-demo").unlearning.methods
    assert "cf_reset_head" not in pipeline_module.unlearner_settings(get_preset("fmnist-badnet").unlearning, "cf")
    with pytest.raises(ConfigError, match="cf_reset"):
        apply_overrides(get_preset("fmnist-badnet"), ["unlearning.cf_reset_head=true"])
