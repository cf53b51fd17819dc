"""Hostile input at the command line and in run configurations: every case gets one clear line, never a traceback.

Each case is what a careless or unlucky user types. The CLI must exit 2 with a message that
names the problem, must not claim the ``--out`` directory of a run that never started, and
must keep full tracebacks for genuine bugs (so they never pass for user mistakes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxpoison.cli import main
from jaxpoison.experiments import (
    ConfigError,
    RunConfig,
    RunDirectoryError,
    RunStore,
    apply_overrides,
    from_dict,
    get_preset,
    to_dict,
)

TINY = "digits-badnet-tiny"


# --------------------------------------------------------------------------- run configurations


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", "seed must be a non-negative integer"),
        ("data.train_size=-5", "data.train_size must be at least 1"),
        ("data.test_size=0", "data.test_size must be at least 1"),
        ("victim.recipe.learning_rate=nan", "victim.recipe: TrainRecipe.learning_rate must be a finite number > 0"),
        ("victim.recipe.learning_rate=0", "victim.recipe: TrainRecipe.learning_rate must be a finite number > 0"),
        ("victim.recipe.learning_rate=-1e-3", "victim.recipe: TrainRecipe.learning_rate must be a finite number"),
        ("victim.recipe.weight_decay=inf", "victim.recipe: TrainRecipe.weight_decay must be a finite number ≥ 0"),
        ("victim.recipe.epochs=0", "victim.recipe: TrainRecipe.epochs must be an integer ≥ 1"),
        ("victim.recipe.batch_size=0", "victim.recipe: TrainRecipe.batch_size must be an integer ≥ 1"),
        ("victim.recipe.optimizer=rmsprop", "victim.recipe: unknown optimizer 'rmsprop'"),
        ("victim.recipe.milestones=9,3", "victim.recipe: TrainRecipe.milestones must be strictly increasing epochs"),
        ("victim.epochs=3", "victim.epochs moved to victim.recipe.epochs"),
        ("attack.brew_steps=3", "attack.brew_steps moved to attack.brew.steps"),
        ("attack.brew.steps=0", "attack.brew: steps, restarts and batch_size must be ≥ 1"),
        ("attack.brew.seed=2", "attack.brew.seed follows the run's seed"),
        ("attack.rate=nan", "attack.rate must be a finite number"),
        ("attack.rate=1.5", "attack.rate must lie in (0, 1)"),
        ("attack.epsilon=inf", "attack.epsilon must be a finite number"),
        ("attack.epsilon=0", "attack.epsilon must be in (0, 1]"),
        ("attack.target=-1", "attack.target must be a class index"),
        ("attack.source=0", "attack.source must be a class index ≥ 0 other than attack.target"),
        ("detection.delta.tau=nan", "detection.delta: DeltaConfig.tau must be a finite number"),
        ("detection.scores.damping=inf", "detection.scores: ScoreConfig.damping must be a finite number > 0"),
        ("detection.scores.damping=0", "detection.scores: ScoreConfig.damping must be a finite number > 0"),
        ("detection.scores.damping=nan", "detection.scores: ScoreConfig.damping must be a finite number > 0"),
        ("detection.scores.batch_size=0", "detection.scores: ScoreConfig.batch_size must be"),
        ("detection.damping=1e-3", "detection.damping moved to detection.scores.damping"),
        ("detection.factors.fisher=exact", "detection.factors: unknown fisher"),
        ("detection.factors.strategy=kfac", "detection.factors.strategy must be 'ekfac'"),
        ("detection.trak.projection_dim=0", "detection.trak: TrakConfig.projection_dim must be an integer ≥ 1"),
        ("detection.freqdef.epochs=0", "detection.freqdef: FreqDefConfig.epochs must be an integer ≥ 1"),
        ("detection.factors.seed=1", "detection.factors.seed follows the run's seed"),
        ("unlearning.max_psr=nan", "unlearning.max_psr must be a finite number"),
        ("unlearning.max_psr=1.5", "unlearning.max_psr must be in [0, 1]"),
        ("unlearning.cf.learning_rate=-0.1", "unlearning.cf: TrainRecipe.learning_rate must be a finite number > 0"),
        ("unlearning.cf_learning_rate=0.1", "unlearning.cf_learning_rate moved to unlearning.cf.learning_rate"),
        ("unlearning.scrub.distill.learning_rate=nan", "unlearning.scrub.distill.learning_rate must be a finite"),
        ("unlearning.scrub_lr=0.1", "unlearning.scrub_lr moved to unlearning.scrub.distill.learning_rate"),
        ("unlearning.scrub_budget=0", "unlearning.scrub_budget must be a positive share"),
        ("unlearning.ssd.alphas=1,nan", "unlearning.ssd.alphas must be a finite number"),
        ("unlearning.ssd.alphas=-1", "unlearning.ssd: SSD needs non-empty, positive alpha"),
    ],
)
def test_run_config_refuses_bad_values_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(get_preset(TINY), [override])
    assert message in str(info.value)


def test_a_config_in_the_older_flat_layout_is_refused_naming_where_each_key_moved():
    stored = to_dict(get_preset(TINY))
    stored["victim"] = {"model": "cnn", "epochs": 10, "batch_size": 32}
    with pytest.raises(ConfigError, match=r"victim\.batch_size moved to victim\.recipe\.batch_size; "
                                          r"victim\.epochs moved to victim\.recipe\.epochs"):  # fmt: skip
        from_dict(RunConfig, stored)


def test_overriding_a_field_of_the_unset_cf_recipe_starts_from_the_victims():
    config = apply_overrides(get_preset("cifar10-badnet-paper"), ["unlearning.cf.learning_rate=0.01"])
    assert config.unlearning.cf == get_preset("cifar10-badnet-paper").victim.recipe.replace(learning_rate=0.01)


def test_every_preset_passes_validation():
    from jaxpoison.experiments.presets import PRESETS

    for name in PRESETS:
        get_preset(name)  # raises ConfigError if a preset itself is out of range


@pytest.mark.parametrize(
    "override, message",
    [
        ("attack.target=10", "attack.target=10 is not a class of digits (10 classes: 0–9)"),
        ("attack.source=12", "attack.source=12 is not a class of digits"),
        ("data.name=nosuch", "nosuch"),
    ],
)
def test_a_run_that_cannot_start_fails_before_any_work_and_claims_no_directory(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["run", TINY, "--set", override, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxpoison: error:") and message in err and "Traceback" not in err
    assert not out.exists()  # the corrected command can use the same --out


# --------------------------------------------------------------------------- the run directory


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("precious")
    assert main(["run", TINY, "--out", str(target), "--no-progress"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert target.read_text() == "precious"  # no data lost


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", TINY, "--out", str(locked / "run"), "--no-progress"]) == 2
        assert "Permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_damaged_run_json_is_refused_without_force(tmp_path):
    config = to_dict(get_preset(TINY))
    with RunStore(tmp_path / "run", config):
        pass
    (tmp_path / "run" / "run.json").write_text('{"config_hash": "ab')  # cut off mid-write by an older version
    with pytest.raises(RunDirectoryError, match=r"run\.json is damaged"):
        RunStore(tmp_path / "run", config)
    with RunStore(tmp_path / "run", config, force=True):  # --force: stages are still verified one by one
        pass
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"] == config


def test_a_second_process_cannot_use_a_run_directory_in_use(tmp_path):
    config = to_dict(get_preset(TINY))
    holder = textwrap.dedent(f"""
        import sys, time
        from jaxpoison.experiments import RunStore
        store = RunStore({str(tmp_path / "run")!r}, {config!r})
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=rf"in use by another jaxpoison process \(pid {process.pid}\)"):
            RunStore(tmp_path / "run", config)
    finally:
        process.communicate("\n", timeout=60)
    with RunStore(tmp_path / "run", config):  # released when the other process ends
        pass


def test_one_process_may_reopen_its_own_run_directory(tmp_path):
    config = to_dict(get_preset(TINY))
    with RunStore(tmp_path / "run", config), RunStore(tmp_path / "run", config, force=True):
        pass  # prepare() then `jaxpoison detect` in one notebook: the lock is the process's


# --------------------------------------------------------------------------- flag files and detector lists


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    """A finished tiny run directory (shared read-only by the cases below)."""
    return tiny_run.prepared.store.root


def _write(tmp_path, name, payload):
    path = tmp_path / name
    if isinstance(payload, np.ndarray):
        np.save(path, payload)
    else:
        path.write_text(payload)
    return path


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("mask.npy", np.array([True, False, True]), "holds a boolean mask, not indices"),
        ("empty.txt", "", "holds no indices"),
        ("empty.npy", np.zeros(0, np.int64), "holds no indices"),
        ("fractions.txt", "1\n2.5\n", "must hold integer training indices"),
        ("nan.npy", np.array([1.0, np.nan]), "must hold integer training indices"),
        ("words.txt", "True\nFalse\n", "is not a .npy array or a text file of numbers"),
        ("strings.npy", np.array(["1", "2"]), "it must hold integer training indices"),
        ("missing.npy", None, "does not exist"),
        ("repeats.npy", np.array([3, 3, 4]), "repeats training indices (e.g. [3])"),
        ("matrix.npy", np.array([[1, 2], [3, 4]]), "holds a 2-D array of shape (2, 2)"),
        ("outside.npy", np.array([10**7]), "lie outside the training set"),
        ("negative.npy", np.array([-1, 3]), "lie outside the training set"),
    ],
)
def test_unlearn_refuses_flag_files_that_are_not_indices(finished_run, tmp_path, capsys, name, payload, message):
    path = tmp_path / name if payload is None else _write(tmp_path, name, payload)
    assert main(["unlearn", "--run", str(finished_run), "--method", "cf", "--flagged", str(path),
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("method", [",", " , ", ""])
def test_detect_with_no_detector_named_is_refused(finished_run, capsys, method):
    assert main(["detect", "--run", str(finished_run), "--method", method, "--no-progress"]) == 2
    assert "--method names no detector" in capsys.readouterr().err


def test_missing_trigger_image_is_a_clear_error(tmp_path, capsys):
    code = main(["poison", "--dataset", "digits", "--attack", "blended", "--target", "1", "--count", "5",
                 "--trigger-image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "p")])  # fmt: skip
    assert code == 2
    assert "--trigger-image" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_unreadable_trigger_image_is_a_clear_error(tmp_path, capsys):
    fake = _write(tmp_path, "fake.png", "not an image")
    code = main(["poison", "--dataset", "digits", "--attack", "blended", "--target", "1", "--count", "5",
                 "--trigger-image", str(fake), "--out", str(tmp_path / "p")])  # fmt: skip
    assert code == 2 and "is not an image file" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [("--epsilon", "nan", "--epsilon"), ("--rate", "nan", "--rate"),
                                                  ("--rate", "0", "--rate"), ("--epsilon", "0", "--epsilon")])
def test_select_refuses_non_finite_or_empty_budgets(tmp_path, capsys, flag, value, message):
    args = {"--epsilon": "0.1", "--rate": "0.01"} | {flag: value}
    code = main(["select", "--method", "rs", "--dataset", "digits", "--attack", "blended", "--epsilon",
                 args["--epsilon"], "--rate", args["--rate"], "--out", str(tmp_path / "s")])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- bugs keep their traceback


def test_an_internal_error_is_not_dressed_up_as_a_user_mistake(monkeypatch):
    from types import SimpleNamespace

    from jaxpoison import cli

    def broken(args):
        raise ValueError("an internal invariant broke")  # numpy and jax raise plain ValueError for bugs

    parser = SimpleNamespace(parse_args=lambda argv: SimpleNamespace(func=broken))
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["datasets"])


def test_interrupting_a_command_says_how_to_resume(monkeypatch, capsys):
    from types import SimpleNamespace

    from jaxpoison import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", lambda: SimpleNamespace(parse_args=lambda argv: SimpleNamespace(
        func=interrupted)))  # fmt: skip
    assert cli.main(["run"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_train_refuses_an_out_that_is_a_file_and_a_failed_start_claims_nothing(tmp_path, capsys, no_local_data):
    target = tmp_path / "a-file"
    target.write_text("precious")
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--out", str(target)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and target.read_text() == "precious"
    missing = tmp_path / "never"
    assert main(["train", "--dataset", "fashion_mnist", "--model", "cnn", "--out", str(missing)]) == 2  # no data
    assert not missing.exists()
