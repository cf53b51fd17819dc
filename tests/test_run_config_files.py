"""`jaxpoison run CONFIG.json` and `jaxpoison run PRESET --dump-config`: configs as files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxpoison.cli import main
from jaxpoison.experiments import ConfigError, apply_overrides, get_preset, load_config, run_pipeline, to_dict

TINY = "digits-badnet-tiny"

# Keys whose values are measurements of this invocation, not results of the run.
# ("phases": Δ-Influence's seconds per phase)
_TIMING_KEYS = {"environment", "wall_seconds", "seconds", "stage_seconds", "this_run", "timings", "phases", "plots"}


def _results(report: dict):
    """The report without timings and the machine's description (JSON round-tripped)."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in _TIMING_KEYS and "seconds" not in k}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(json.loads(json.dumps(report, default=float)))


def test_dump_config_round_trips_with_overrides(tmp_path, capsys):
    path = tmp_path / "configs" / "tiny.json"
    assert main(["run", TINY, "--set", "seed=3", "--set", "detection.delta.n_tol=2", "--dump-config", str(path)]) == 0
    assert "config written to" in capsys.readouterr().out
    expected = apply_overrides(get_preset(TINY), ["seed=3", "detection.delta.n_tol=2"])
    assert json.loads(path.read_text()) == to_dict(expected)
    assert load_config(path) == expected
    # the file is a config like any other: it takes further overrides and dumps again (to standard output)
    assert main(["run", str(path), "--set", "seed=4", "--dump-config"]) == 0
    assert json.loads(capsys.readouterr().out) == to_dict(apply_overrides(expected, ["seed=4"]))


def test_a_partial_config_file_takes_the_defaults(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"data": {"name": "digits"}, "seed": 7}))
    config = load_config(path)
    assert config.seed == 7 and config.data.name == "digits"


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "not a jaxpoison config: it holds a JSON list"),
        ("{oops", "not a jaxpoison config: not valid JSON"),
        ("{}", "not a jaxpoison config: it sets nothing"),
        ('{"name": "pkg", "version": "1.0"}', "not a valid jaxpoison config: unknown key(s) ['name', 'version']"),
        ('{"attack": {"rate": 2.0}}', "not a valid jaxpoison config: attack.rate must lie in (0, 1)"),
        ('{"victim": {"epochs": 3}}', "victim.epochs moved to victim.recipe.epochs"),
    ],
)
def test_a_file_that_is_not_a_config_is_refused_in_words(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_paths_that_are_not_configs(tmp_path, capsys):
    binary = tmp_path / "weights.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    for argv, message in (
        ([str(binary)], "not a jaxpoison config: not a text file"),
        ([str(tmp_path / "missing.json")], "no config file"),
        ([str(tmp_path)], "is a directory without run.json"),
        (["no-such-thing"], "unknown preset 'no-such-thing', and no config file of that name"),
        ([TINY], "needs --out DIR"),
        ([TINY, "--dump-config", str(tmp_path)], "is a directory; give a file name"),
    ):
        out = [] if argv == [TINY] or "--dump-config" in argv else ["--out", str(tmp_path / "out")]
        assert main(["run", *argv, *out]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_run_json_reproduces_the_runs_report(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    report = run_pipeline(get_preset(TINY), first, progress=True)
    # Every progress bar names its stage and its position among the run's 11 stages.
    bars = capsys.readouterr().err
    for label in ("[1/11] clean model · epoch 1/10", "[3/11] victim · epoch 10/10",
                  "[5/11] EK-FAC factors · covariance", "[5/11] EK-FAC factors · lambda",
                  "[6/11] detect: Δ-Influence · scoring",
                  "[10/11] unlearn: EU on Δ-Influence's flags · epoch 1/10",
                  "[11/11] unlearn: CF on Δ-Influence's flags · epoch 1/10"):  # fmt: skip
        assert label in bars, label
    assert "\repoch 1/10" not in bars  # no bar without its stage
    saved = json.loads((first / "run.json").read_text())
    assert load_config(first / "run.json") == get_preset(TINY) == load_config(first)
    assert main(["run", str(first / "run.json"), "--out", str(second), "--no-progress"]) == 0
    capsys.readouterr()
    replayed = json.loads((second / "report.json").read_text())
    assert json.loads((second / "run.json").read_text()) == saved  # same config, same config hash
    assert _results(replayed) == _results(report)
    assert replayed["victim"]["psr"] > 0.5 and replayed["detection"]["delta_influence"]["tpr"] >= 0.9


def test_loader_options_reach_the_loader_and_are_checked():
    from jaxpoison.experiments import apply_overrides, get_preset
    from jaxpoison.experiments.config import ConfigError, RunConfig
    from jaxpoison.experiments.config import from_dict as load_config_dict
    from jaxpoison.experiments.victim import clean_inputs, load_data

    tiny = get_preset("digits-badnet-tiny")
    with pytest.raises(ConfigError, match=r"data.points is not an option of dataset 'digits' \(it takes none\)"):
        apply_overrides(tiny, ["data.points=128"])
    with pytest.raises(ConfigError, match=r"data.image_size must be an integer ≥ 1"):
        apply_overrides(tiny, ["data.name=imagenet10", "data.image_size=0"])
    clouds = apply_overrides(tiny, ["data.name=shapes3d", "data.points=48", "data.validation_fraction=0"])
    splits = load_data(clouds.data, clouds.seed)
    assert splits.train.image_shape == (48, 3) and splits.test.image_shape == (48, 3)
    assert clean_inputs(clouds, splits)["data"]["points"] == 48
    # unset options stay out of run hashes and the clean model's key, so runs stored before they existed are reused
    assert "points" not in to_dict(tiny)["data"] and to_dict(clouds)["data"]["points"] == 48
    assert load_config_dict(RunConfig, to_dict(clouds)) == clouds and load_config_dict(RunConfig, to_dict(tiny)) == tiny
    assert set(clean_inputs(tiny, load_data(tiny.data, tiny.seed))["data"]) == {
        "name", "train_size", "test_size", "validation_fraction"}


def test_ifs_settings_reach_the_selection_and_its_stage_key(tmp_path, monkeypatch):
    from jaxpoison.experiments import apply_overrides, get_preset
    from jaxpoison.experiments import victim as victim_module
    from jaxpoison.experiments.config import ConfigError, to_dict
    from jaxpoison.experiments.store import RunStore
    from jaxpoison.selection import IFSConfig, random_selection

    seen = []

    def spy(method, dataset, trigger, target, rate, config=None, *, seed=0, progress=True):
        seen.append((method, config))
        return random_selection(dataset, target, rate, seed=seed)  # the stage's plumbing, not IFS itself

    monkeypatch.setattr(victim_module, "select_poisons", spy)
    base = apply_overrides(get_preset("digits-badnet-tiny"), ["selection=ifs"])
    tuned = apply_overrides(base, ["ifs.surrogate_epochs=2", "ifs.lissa.depth=50", 'ifs.model_kwargs={"width": 4}'])
    assert tuned.ifs == IFSConfig(surrogate_epochs=2, model_kwargs={"width": 4},
                                  lissa=dataclasses.replace(IFSConfig().lissa, depth=50))  # fmt: skip
    assert "ifs" not in to_dict(base) and to_dict(tuned)["ifs"]["surrogate_epochs"] == 2
    keys = []
    for config in (base, tuned):
        splits = victim_module.load_data(config.data, config.seed)
        with RunStore(tmp_path / str(len(keys)), to_dict(config)) as store:
            clean_key, clean = victim_module.clean_stage(store, config, splits, False)
            keys.append(victim_module.poison_stage(store, config, splits, clean, clean_key, False)[0])
    assert seen == [("ifs", None), ("ifs", tuned.ifs)]
    assert keys[0] != keys[1]  # other IFS settings, other poisons: never reused across them
    with pytest.raises(ConfigError, match="read by selection=ifs only"):
        apply_overrides(get_preset("digits-badnet-tiny"), ["ifs.eta=2"])
