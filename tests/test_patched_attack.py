"""The patched attack with manipulation strength ε (0–255 scale), down to the pixel."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpoison.attacks import (
    PatchedTrigger,
    PoisonConfig,
    TriggerError,
    load_trigger,
    patched,
    poison_dataset,
    save_trigger,
)
from tests.conftest import make_dataset


def test_epsilon_2_changes_no_pixel_by_more_than_2_over_255_and_changes_some():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.float32) / 255.0
    out = np.asarray(patched((32, 32, 3), 2).apply(images))
    change = np.abs(out - images)
    assert change.max() <= 2 / 255 + 1e-7
    assert (change > 1 / 255).any()
    # only the 3×3 bottom-right patch (1-pixel margin) moves
    moved = (change > 0).any(axis=(0, 3))
    rows, cols = np.nonzero(moved)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (28, 30, 28, 30)


def test_amplitude_scales_with_epsilon_and_clipping_keeps_the_range():
    grey = np.full((16, 16, 1), 0.5, np.float32)
    for eps in (1, 4, 8):
        trigger = patched((16, 16, 1), eps, size=4, position="center", pattern="solid")
        out = np.asarray(trigger.apply(grey))
        np.testing.assert_allclose(out.max() - 0.5, eps / 255, rtol=1e-5)
        assert trigger.describe() == {"type": "patched", "name": trigger.name, "epsilon": float(eps), "pixels": 16}
    white = np.ones((16, 16, 1), np.float32)
    out = np.asarray(patched((16, 16, 1), 8, pattern="checkerboard").apply(white))
    assert out.max() == 1.0 and out.min() == pytest.approx(1 - 8 / 255)


def test_position_size_and_pattern_are_configurable():
    t = patched((20, 30, 3), 4, size=(2, 5), position=(3, 7), pattern="checkerboard")
    rows, cols = np.nonzero(t.mask[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 4, 7, 11)
    assert t.pattern[3, 7, 0] == 1.0 and t.pattern[3, 8, 0] == -1.0 and t.pattern[4, 7, 0] == -1.0
    top_left = patched((32, 32, 3), 2, size=3, position="top-left", margin=0)
    assert np.nonzero(top_left.mask[..., 0])[0].min() == 0
    a, b = patched((8, 8, 3), 2, pattern="random", seed=1), patched((8, 8, 3), 2, pattern="random", seed=1)
    np.testing.assert_array_equal(a.pattern, b.pattern)
    custom = patched((8, 8, 1), 2, size=2, pattern=np.array([[1.0, 0.0], [0.0, -1.0]]))
    assert custom.pattern[..., 0][custom.mask[..., 0] > 0].tolist() == [1.0, 0.0, 0.0, -1.0]
    assert patched((224, 224, 3), 2).describe()["pixels"] == 21 * 21  # 3 px at 32×32, scaled


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": 40}, r"40×40 patch with margin 1 does not fit 32×32"),
        ({"size": 3, "position": (30, 5)}, r"at \(row, col\) = \(30, 5\) does not fit 32×32 images.*rows 0–31"),
        ({"size": 3, "position": (-1, 0)}, "does not fit"),
        ({"size": 33, "position": "center"}, "does not fit"),
        ({"position": "middle"}, "unknown patch position 'middle'"),
        ({"pattern": "stripes"}, "unknown patch pattern"),
        ({"size": 0}, "at least 1×1"),
        ({"size": 2, "pattern": np.ones((3, 3))}, r"pattern array must be \[2, 2\]"),
    ],
)
def test_patches_that_do_not_fit_are_refused_clearly(kwargs, match):
    with pytest.raises(TriggerError, match=match):
        patched((32, 32, 3), 2, **kwargs)


@pytest.mark.parametrize("eps", [0, -1, 256, float("nan"), True])
def test_epsilon_outside_0_255_is_refused(eps):
    with pytest.raises(TriggerError, match="epsilon"):
        patched((8, 8, 1), eps)


def test_patched_poisons_round_trip_and_refuse_wrong_shapes(tmp_path):
    data = make_dataset(n=40, shape=(8, 8, 3), num_classes=4)
    trigger = patched((8, 8, 3), 4, size=2)
    result = poison_dataset(data, trigger, PoisonConfig(target=0, count=5))
    change = np.abs(result.dataset.images[result.poison_indices] - data.images[result.source_indices])
    assert change.max() <= 4 / 255 + 1e-7 and change.max() > 0
    save_trigger(tmp_path / "t", trigger)
    loaded = load_trigger(tmp_path / "t")
    assert isinstance(loaded, PatchedTrigger) and loaded.epsilon == 4.0
    np.testing.assert_array_equal(np.asarray(loaded.apply(data.images)), np.asarray(trigger.apply(data.images)))
    with pytest.raises(TriggerError, match="made for"):
        trigger.apply(np.zeros((2, 16, 16, 3), np.float32))


def test_run_config_takes_the_patched_attack_and_keeps_other_configs_unchanged():
    from jaxpoison.experiments.config import (
        AttackConfig,
        ConfigError,
        PatchConfig,
        RunConfig,
        apply_overrides,
        from_dict,
        to_dict,
    )

    plain = RunConfig()
    assert "patch" not in to_dict(plain)["attack"]  # other attacks: the JSON (and run hash) as before
    config = apply_overrides(plain, ["attack.name=patched", "attack.epsilon=2", "attack.patch.size=5",
                                     "attack.patch.position=3,4", "attack.patch.pattern=solid"])  # fmt: skip
    assert config.attack.patch == PatchConfig(size=5, position="3,4", pattern="solid")
    assert to_dict(config)["attack"]["patch"]["size"] == 5
    assert from_dict(RunConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match=r"attack.epsilon must be in \(0, 255\]"):
        RunConfig(attack=AttackConfig(name="patched", epsilon=300.0))
    with pytest.raises(ConfigError, match=r"attack.epsilon must be in \(0, 1\]"):
        RunConfig(attack=AttackConfig(name="blended", epsilon=2.0))
    with pytest.raises(ConfigError, match=r"attack\.patch\.position"):
        apply_overrides(plain, ["attack.patch.position=middle"])
    with pytest.raises(ConfigError, match=r"attack\.patch\.pattern"):
        PatchConfig(pattern="stripes")


def test_make_trigger_builds_the_configured_patch():
    from jaxpoison.experiments.config import AttackConfig, PatchConfig
    from jaxpoison.experiments.victim import make_trigger

    data = make_dataset(n=20, shape=(16, 16, 3))
    attack = AttackConfig(name="patched", epsilon=4.0, patch=PatchConfig(size=2, position="top-left", margin=0))
    trigger = make_trigger(attack, data, None, seed=0, progress=False)
    assert isinstance(trigger, PatchedTrigger) and trigger.epsilon == 4.0
    assert np.nonzero(trigger.mask[..., 0])[0].tolist() == [0, 0, 1, 1]
    assert make_trigger(AttackConfig(name="patched"), data, None, seed=0, progress=False).epsilon == 2.0


def test_select_command_runs_the_patched_attack(tmp_path, capsys):
    import json

    from jaxpoison.cli import main

    out = tmp_path / "sel"
    assert main(["select", "--method", "hfe", "--dataset", "digits", "--attack", "patched", "--epsilon", "2",
                 "--patch-size", "2", "--patch-position", "top-left", "--rate", "0.03",
                 "--out", str(out)]) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trigger"]["type"] == "patched" and manifest["trigger"]["epsilon"] == 2.0
    assert manifest["trigger"]["pixels"] == 4 and manifest["attack"] == "patched"
    capsys.readouterr()
    assert main(["select", "--method", "rs", "--dataset", "digits", "--attack", "patched", "--epsilon", "300",
                 "--rate", "0.03", "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "(0, 255]" in capsys.readouterr().err
    assert main(["select", "--method", "rs", "--dataset", "digits", "--attack", "patched", "--epsilon", "2",
                 "--patch-size", "9", "--rate", "0.03", "--out", str(tmp_path / "y")]) == 2  # fmt: skip
    assert "does not fit 8×8" in capsys.readouterr().err


def test_benchmark_times_a_proxy_epoch_and_builds_patched_triggers():
    from jaxpoison.selection import FUSConfig
    from tests.test_selection_baselines import load_benchmark

    bench = load_benchmark()
    data = make_dataset(n=64, shape=(8, 8, 1))
    config = FUSConfig(rounds=1, epochs=2, model="mlp", model_kwargs={"hidden": (8,)}, batch_size=32)
    assert bench.measure_epoch_seconds(data, config, epochs=2) > 0
    trigger = bench.make_trigger("patched", data, 4.0)
    assert isinstance(trigger, PatchedTrigger) and trigger.epsilon == 4.0
    assert bench.method_config("ifs", None, 2, "pointnet_small", {"head_widths": [8]}).model_kwargs == {
        "head_widths": [8]
    }
