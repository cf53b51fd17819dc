"""The arena: cells over the pipeline's stages, resuming from markers, the control, the all-to-all attack."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.attacks import all_to_all_asr, all_to_all_metrics, all_to_all_targets, poison_all_to_all, square_patch
from jaxpoison.cli import main
from jaxpoison.errors import InputError
from jaxpoison.experiments.arena import (
    ARENA_DIGITS,
    ArenaError,
    ArenaSpec,
    _finished_row,
    arena_markdown,
    defence_effectiveness_rating,
    f1_score,
    load_spec,
    paired_comparisons,
    plan_arena,
    run_arena,
    spec_from_dict,
    write_arena_report,
)
from jaxpoison.models.plain import from_apply
from tests.conftest import make_dataset

# 2 attacks × 1 selection × 2 detectors × 1 unlearner × 1 seed, plus the control: about a minute.
TINY = ArenaSpec(base="digits-badnet-tiny", attacks=("badnet", "blended"), selections=("rs",),
                 detectors=("spectral", "activation_clustering"), unlearners=("cf",), seeds=(0,))  # fmt: skip


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    out = tmp_path_factory.mktemp("arena") / "out"
    report = run_arena(TINY, out, progress=False)
    return out, report


def _markers(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}


def test_every_cell_is_present_and_the_control_flags_without_a_tpr(arena):
    out, report = arena
    plan = plan_arena(TINY)
    names = {c.name for c in plan.cells}
    assert len(names) == 2 * 2 + 2  # (attack × detector) + one control row per detector
    assert {r["cell"] for r in report["cells"]} == names
    assert set(report["this_run"]["computed"]) == names and not report["this_run"]["reused"]
    assert {f"{n}.json" for n in names} == set(_markers(out))
    saved = json.loads((out / "arena.json").read_text())
    assert {r["cell"] for r in saved["cells"]} == names
    for row in saved["cells"]:
        assert row["status"] == "done"
        if row["kind"] == "control":
            assert row["detection"]["tpr"] is None and row["detection"]["f1"] is None  # nothing to find: not 0
            assert row["detection"]["n_flagged"] > 0 and row["detection"]["fpr"] > 0
        else:
            d = row["detection"]
            assert 0 <= d["tpr"] <= 1 and d["n_poisons"] > 0 and d["auroc"] is not None
            assert d["f1"] == pytest.approx(f1_score(d["precision"], d["tpr"]))
            cf = row["unlearning"]["cf"]
            assert cf["der"] == pytest.approx(defence_effectiveness_rating(
                row["psr_before"], cf["psr_after"], row["clean_accuracy_before"], cf["clean_accuracy_after"]))
            assert row["seconds"]["victim"] > 0 and row["seconds"]["detect"] > 0
    assert [e["detector"] for e in saved["summary"]["control"]] == ["spectral", "activation_clustering"]
    assert all(e["tpr"]["mean"] is None for e in saved["summary"]["control"])
    text = (out / "arena.md").read_text()
    assert "## No-poison control" in text and "| badnet | rs | Spectral signatures |" in text
    for plot in ("f1_heatmap", "psr_after_heatmap", "cost_vs_f1"):
        assert (out / saved["plots"][plot]).stat().st_size > 0


def test_the_clean_model_is_trained_once_per_seed_and_its_key_ignores_the_attack(arena):
    out, report = arena
    stages = report["this_run"]["stages"]
    clean = [status for events in stages.values() for name, status in events if name == "clean"]
    assert clean == ["computed", "reused"]
    keys = {json.loads((out / "runs" / g / "stages" / "clean" / "stage.json").read_text())["key"] for g in stages}
    assert len(keys) == 1
    # One victim per (attack, selection, seed): each group trained its own.
    assert all(("victim", "computed") in events for events in stages.values())


def test_a_rerun_recomputes_nothing(arena):
    out, _ = arena
    before = _markers(out)
    again = run_arena(TINY, out, progress=False)
    assert again["this_run"]["computed"] == [] and again["this_run"]["stages"] == {}
    assert sorted(again["this_run"]["reused"]) == sorted(c.name for c in plan_arena(TINY).cells)
    assert _markers(out) == before


def test_removing_one_marker_recomputes_only_that_cell(arena):
    out, _ = arena
    cell = "blended__rs__spectral__seed0"
    old = json.loads((out / "cells" / f"{cell}.json").read_text())
    (out / "cells" / f"{cell}.json").unlink()
    before = _markers(out)
    again = run_arena(TINY, out, progress=False)
    assert again["this_run"]["computed"] == [cell]
    assert list(again["this_run"]["stages"]) == ["blended-rs-seed0"]  # only its group's store was opened
    assert all(status == "reused" for _, status in again["this_run"]["stages"]["blended-rs-seed0"])
    after = _markers(out)
    assert {k: v for k, v in after.items() if k != f"{cell}.json"} == before
    assert json.loads((out / "cells" / f"{cell}.json").read_text()) == old  # rebuilt from the stored stages


def test_the_cli_resumes_a_finished_arena_from_a_spec_file(arena, tmp_path, capsys):
    out, _ = arena
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(TINY.to_dict()))
    assert load_spec(spec_file) == TINY
    assert main(["arena", str(spec_file), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "# jaxpoison arena: digits-badnet-tiny" in printed and "arena.json" in printed


def test_all_to_all_asr_on_a_hand_made_example():
    # C = 3: targets are [1, 2, 0, 0]; predictions [1, 2, 0, 1] hit the first three.
    assert all_to_all_targets([0, 1, 2, 2], 3).tolist() == [1, 2, 0, 0]
    assert all_to_all_asr([1, 2, 0, 1], [0, 1, 2, 2], 3) == 0.75
    assert all_to_all_asr([0, 1, 2, 2], [0, 1, 2, 2], 3) == 0.0  # untouched predictions: no success
    with pytest.raises(InputError, match="equal length"):
        all_to_all_asr([1, 2], [0, 1, 2], 3)
    with pytest.raises(InputError, match="in \\[0, 3\\)"):
        all_to_all_targets([0, 3], 3)


def _hand_made_all_to_all():
    """2×2 images; pixel (0, 0) holds the class (0, 0.5, 1 for classes 0, 1, 2), the trigger whitens (1, 1).
    The model: untriggered → the true class; triggered → class 0 → 1, 1 → 2, 2 → 1 (a miss: target 0)."""
    shape, classes = (2, 2, 1), np.array([0, 1, 2, 2, 1, 0], np.int32)
    images = np.zeros((classes.size, *shape), np.float32)
    images[:, 0, 0, 0] = classes / 2
    data = make_dataset(n=classes.size, shape=shape, num_classes=3).replace(images=images, labels=classes)
    table = jnp.array([[1, 2, 1], [0, 1, 2]])  # [triggered?, class] → prediction

    def apply(params, x):
        c = jnp.round(x[:, 0, 0, 0] * 2).astype(jnp.int32)
        t = (x[:, 1, 1, 0] > 0.5).astype(jnp.int32)
        return jnp.eye(3)[table[1 - t, c]] + 0 * params["w"].sum()

    model = from_apply(apply, {"w": jnp.zeros((1, 1))}, shape)
    return model, data, square_patch(shape, 1, (1.0,), margin=0)


def test_all_to_all_metrics_with_a_hand_made_model():
    model, data, trigger = _hand_made_all_to_all()
    metrics = all_to_all_metrics(model, data, trigger)
    # labels [0, 1, 2, 2, 1, 0] → triggered predictions [1, 2, 1, 1, 2, 1]; targets [1, 2, 0, 0, 2, 1]
    assert metrics["asr"] == pytest.approx(4 / 6)
    assert metrics["per_class_asr"] == {0: 1.0, 1: 1.0, 2: 0.0}
    assert metrics["clean_accuracy"] == 1.0 and metrics["victims"] == 6 and metrics["triggered_accuracy"] == 0.0


def test_all_to_all_test_points_per_target_on_a_hand_made_model():
    from jaxpoison.experiments.victim import Poisoning, pick_points_per_target

    model, data, trigger = _hand_made_all_to_all()
    poisoning = Poisoning(data, np.zeros(0, np.int64), trigger, None, None, all_to_all=True)
    # class 0 → 1 and 1 → 2 hit their targets; class 2 → 1 misses target 0, so target 0 has no point
    one = pick_points_per_target(model, poisoning, data)
    assert sorted(one) == [1, 2] and one[1][0].tolist() == [0] and one[2][0].tolist() == [1]
    assert np.all(one[1][1][:, 1, 1, 0] == 1.0)  # the points are the triggered images
    two = pick_points_per_target(model, poisoning, data, count=2)
    assert two[1][0].tolist() == [0, 5] and two[2][0].tolist() == [1, 4]
    assert pick_points_per_target(model, poisoning, data, count=3) == {}
    with pytest.raises(InputError, match="for the all-to-all attack"):
        pick_points_per_target(model, poisoning._replace(all_to_all=False, target=0), data)


def test_per_target_detections_merge_as_union_and_maximum():
    from jaxpoison.experiments.detectors import Detection, merge_detections

    a = Detection(np.array([1, 4]), np.array([0.1, 0.9, 0.0, 0.2, 0.8]), 1.5, {})
    b = Detection(np.array([0, 4]), np.array([0.7, 0.3, 0.0, 0.1, 0.6]), 2.0, {})
    merged = merge_detections({2: b, 0: a})
    assert merged.flagged.tolist() == [0, 1, 4]
    np.testing.assert_allclose(merged.scores, [0.7, 0.9, 0.0, 0.2, 0.8])
    assert merged.seconds == 3.5 and merged.extra == {"targets": [0, 2], "flagged_per_target": [2, 2]}
    with pytest.raises(InputError, match="no per-target detection"):
        merge_detections({})


def test_poison_all_to_all_relabels_each_poison_to_the_next_class():
    data = make_dataset(n=40, num_classes=4)
    poisoned = poison_all_to_all(data, square_patch(data.image_shape, 2, (1.0,), margin=0), count=10, seed=1)
    chosen = poisoned.poison_indices
    assert chosen.size == 10
    assert np.array_equal(poisoned.dataset.labels[chosen], (data.labels[chosen] + 1) % 4)
    rest = np.setdiff1d(np.arange(40), chosen)
    assert np.array_equal(poisoned.dataset.labels[rest], data.labels[rest])
    assert np.array_equal(poisoned.dataset.images[rest], data.images[rest])
    assert not np.array_equal(poisoned.dataset.images[chosen], data.images[chosen])


def test_der_and_f1():
    assert defence_effectiveness_rating(1.0, 0.0, 0.9, 0.9) == 1.0
    assert defence_effectiveness_rating(0.9, 0.9, 0.9, 0.9) == 0.5
    assert defence_effectiveness_rating(0.9, 0.1, 0.95, 0.85) == pytest.approx((0.8 - 0.1 + 1) / 2)
    assert defence_effectiveness_rating(0.2, 0.5, 0.9, 0.95) == 0.5  # gains are not credited
    assert f1_score(0.5, 1.0) == pytest.approx(2 / 3) and f1_score(0.0, 0.0) == 0.0 and f1_score(0.0, None) is None


def _row(attack, selection, detector, seed, f1, psr_after, kind="poisoned"):
    detection = {"f1": f1, "tpr": f1, "auroc": None if f1 is None else 0.5 + f1 / 2, "precision": f1}
    return {"status": "done", "kind": kind, "attack": attack, "selection": selection, "detector": detector,
            "seed": seed, "detection": detection, "unlearning": {"eu": {"psr_after": psr_after}}}  # fmt: skip


def test_paired_comparisons_pair_by_seed_and_skip_missing_values():
    from scipy import stats

    rows = []
    for seed, (rs, ifs, spectral) in enumerate([(0.50, 0.40, 0.30), (0.60, 0.45, 0.20), (0.70, 0.65, 0.35)]):
        rows += [_row("badnet", "rs", "delta_influence", seed, rs, 0.01 * seed),
                 _row("badnet", "ifs", "delta_influence", seed, ifs, None if seed == 1 else 0.02 * seed),
                 _row("badnet", "rs", "spectral", seed, spectral, 0.5)]  # fmt: skip
    rows += [None, _row("badnet", "rs", "spectral", 0, 0.9, None, kind="control")]  # pending and control: ignored
    paired = paired_comparisons(rows)
    (sel,) = paired["selection"]
    assert (sel["selection"], sel["baseline"], sel["detector"], sel["seeds"]) == ("ifs", "rs", "delta_influence",
                                                                                  [0, 1, 2])  # fmt: skip
    diffs = np.array([0.40 - 0.50, 0.45 - 0.60, 0.65 - 0.70])
    assert sel["f1"]["mean"] == pytest.approx(diffs.mean()) and sel["f1"]["wins"] == 0 and sel["f1"]["n"] == 3
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert sel["f1"]["ci_low"] == pytest.approx(diffs.mean() - half)
    assert sel["psr_after"]["eu"]["n"] == 2  # seed 1's diverged unlearner leaves its pair out
    assert sel["psr_after"]["eu"]["mean"] == pytest.approx((0.0 - 0.0 + 0.04 - 0.02) / 2)
    (det,) = paired["detector"]
    assert (det["detector"], det["versus"], det["pairs"]) == ("delta_influence", "spectral",
                                                              [["rs", 0], ["rs", 1], ["rs", 2]])  # fmt: skip
    assert det["f1"]["mean"] == pytest.approx(np.mean([0.20, 0.40, 0.35])) and det["f1"]["wins"] == 3
    text = arena_markdown(TINY, {"detection": [], "unlearning": [], "control": [], "paired": paired}, rows, (), {},
                          1.0, pending=["badnet__ifs__spectral__seed0"])  # fmt: skip
    assert "## Selections against rs, paired by seed" in text and "(0/3)" in text
    assert "partial: 1 pending" in text and "- badnet__ifs__spectral__seed0" in text


def test_an_arena_continues_elsewhere_from_a_report(arena, tmp_path):
    """--resume-from: another machine's arena.json seeds the markers whose keys match; the rest is computed."""
    out, _ = arena
    report = json.loads((out / "arena.json").read_text())
    stale = "badnet__rs__spectral__seed0"
    for row in report["cells"]:
        if row["cell"] == stale:
            row["key"] = "0" * 16  # another configuration: must not be taken over
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps(report))
    again = run_arena(TINY, tmp_path / "elsewhere", progress=False, resume_from=shipped)
    names = {c.name for c in plan_arena(TINY).cells}
    assert set(again["this_run"]["imported"]) == names - {stale}
    assert again["this_run"]["computed"] == [stale]
    taken = json.loads((tmp_path / "elsewhere" / "cells" / "blended__rs__spectral__seed0.json").read_text())
    assert taken["imported_from"] == str(shipped)
    assert taken["detection"] == next(r for r in report["cells"] if r["cell"] == taken["cell"])["detection"]
    # a second import takes nothing over: every cell now has its own marker
    assert run_arena(TINY, tmp_path / "elsewhere", progress=False, resume_from=shipped)["this_run"]["imported"] == []


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read --resume-from"),
    ("{not json", "is not JSON"),
    ('{"cells": 3}', "holds no arena cells"),
    ('{"cells": [], "arena_version": 0}', "arena_version 0"),
])  # fmt: skip
def test_a_bad_resume_report_is_refused_with_what_to_give(tmp_path, content, message):
    report = tmp_path / "arena.json"
    if content is not None:
        report.write_text(content)
    with pytest.raises(ArenaError, match=message):
        run_arena(TINY, tmp_path / "out", progress=False, resume_from=report)
    assert not (tmp_path / "out" / "cells").exists() or not any((tmp_path / "out" / "cells").iterdir())


def test_an_interrupted_arena_reports_what_it_has(arena, tmp_path):
    """The report of a partial arena lists its pending cells (run_arena writes one after every group)."""
    import shutil

    out, _ = arena
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    missing = "blended__rs__activation_clustering__seed0"
    (partial / "cells" / f"{missing}.json").unlink()
    plan = plan_arena(TINY)
    rows = [_finished_row(partial, c) for c in plan.cells]
    report = write_arena_report(partial, TINY, plan, rows, 1.0)
    assert report["pending"] == [missing] and missing not in {r["cell"] for r in report["cells"]}
    saved = json.loads((partial / "arena.json").read_text())
    assert saved["pending"] == [missing] and len(saved["cells"]) == len(plan.cells) - 1
    assert f"- {missing}" in (partial / "arena.md").read_text()


def test_cells_that_do_not_apply_are_listed_with_the_reason():
    spec = ArenaSpec(base="digits-badnet-tiny", attacks=("badnet", "brew", "all_to_all"), selections=("rs", "ifs"),
                     detectors=("spectral",), unlearners=("eu",), seeds=(0, 1))  # fmt: skip
    plan = plan_arena(spec)
    skipped = {(n["attack"], n["selection"]): n["reason"] for n in plan.not_applicable}
    assert set(skipped) == {("brew", "ifs"), ("all_to_all", "ifs")}
    assert "clean-label" in skipped[("brew", "ifs")] and "one per class" in skipped[("all_to_all", "ifs")]
    assert sorted(g.name for g in plan.groups) == sorted(
        f"{a}-{s}-seed{k}" for k in (0, 1) for a, s in (("badnet", "rs"), ("badnet", "ifs"), ("brew", "rs"),
                                                        ("all_to_all", "rs")))  # fmt: skip
    # one control row per detector and seed, hosted by the seed's first group
    controls = [c for c in plan.cells if c.kind == "control"]
    assert sorted(c.name for c in controls) == ["control__spectral__seed0", "control__spectral__seed1"]
    for cell in plan.cells:  # each cell's own configuration: its detector, the base's settings otherwise
        assert cell.config.detection.methods == (cell.detector,) and cell.config.seed == cell.seed
        assert cell.config.victim == plan.groups[0].config.victim


@pytest.mark.parametrize(
    "values, message",
    [
        ({"base": "nope", "attacks": ["badnet"]}, "base must be a preset"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet", "laser"]}, "attacks has unknown entries \\['laser'\\]"),
        ({"base": "digits-badnet-tiny", "attacks": []}, "attacks must be a non-empty list"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "detectors": ["oracle"]}, "detectors has unknown"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "unlearners": ["eu", "eu"]}, "lists an entry twice"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "selections": ["best"]}, "selections has unknown"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "seeds": [0, 0]}, "lists a seed twice"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "seeds": [-1]}, "integers ≥ 0"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "seeds": [True]}, "integers ≥ 0"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "overrides": ["seed=3"]}, "seed is an axis"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "overrides": ["victim.recipe.epochs"]}, "KEY=VALUE"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "attack_overrides": {"brew": []}}, "not in attacks"),
        ({"base": "digits-badnet-tiny", "attacks": ["badnet"], "colour": "red"}, "unknown arena spec key"),
        ({"attacks": ["badnet"]}, "needs \\['base'\\]"),
        ([1, 2], "JSON object"),
    ],
)
def test_spec_validation_errors(values, message):
    with pytest.raises(ArenaError, match=message):
        spec_from_dict(values)


def test_bad_overrides_and_directories_are_refused_before_any_work(tmp_path):
    spec = ArenaSpec(base="digits-badnet-tiny", attacks=("badnet",), overrides=("victim.recipe.epochz=3",))
    with pytest.raises(ArenaError, match=r"group badnet-rs-seed0: unknown key 'victim\.recipe\.epochz'"):
        plan_arena(spec)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ArenaError, match="holds no arena"):
        run_arena(TINY, tmp_path / "other", progress=False)
    with pytest.raises(ArenaError, match="not a preset"):
        load_spec(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArenaError, match="not a JSON arena spec"):
        load_spec(tmp_path / "bad.json")


@pytest.mark.slow
def test_arena_digits_end_to_end(tmp_path):
    report = run_arena(ARENA_DIGITS, tmp_path / "arena", progress=False)
    plan = plan_arena(ARENA_DIGITS)
    assert {r["cell"] for r in report["cells"]} == {c.name for c in plan.cells}
    assert {(n["attack"], n["selection"]) for n in report["not_applicable"]} == {
        ("brew", "ifs"), ("brew", "rd"), ("all_to_all", "ifs"), ("all_to_all", "rd")}
    controls = [r for r in report["cells"] if r["kind"] == "control"]
    assert len(controls) == len(ARENA_DIGITS.detectors)
    assert all(r["detection"]["tpr"] is None for r in controls if r["status"] == "done")
    assert any(r["detection"]["n_flagged"] > 0 for r in controls if r["status"] == "done")
    again = run_arena(ARENA_DIGITS, tmp_path / "arena", progress=False)
    assert again["this_run"]["computed"] == []


@pytest.mark.parametrize("name", ["jaxpoison.experiments.arena", "jaxpoison.attacks.all_to_all"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_all_to_all_runs_the_influence_detectors_once_per_target(tmp_path):
    """Each target's poisons are found from that target's own identified point; the flags are united."""
    from jaxpoison.experiments import apply_overrides, get_preset, run_pipeline

    config = apply_overrides(get_preset("digits-badnet-tiny"), [
        "attack.name=all_to_all", "attack.rate=0.1", "detection.methods=ekfac,spectral", "unlearning.methods=eu",
        "unlearning.detectors=ekfac"])  # fmt: skip
    report = run_pipeline(config, tmp_path / "run", progress=False)
    ekfac = report["detection"]["ekfac"]
    targets = ekfac["info"]["targets"]
    assert len(targets) >= 8 and len(ekfac["info"]["flagged_per_target"]) == len(targets)  # 10 on this seed
    spectral = report["detection"]["spectral"]
    assert "targets" not in spectral.get("info", {})  # no test point: one run
    # it removes 1.5 × the rate from each class (205 of 1,367 here), not 1.5 × an all-to-one target share (1,027)
    assert spectral["n_flagged"] < 0.2 * report["data"]["train"] and spectral["tpr"] > 0.8
    # Poisons of one target are about a tenth of all; recall beyond that comes from the other targets' runs.
    assert ekfac["tpr"] > 0.8  # 0.993 on this seed


def test_spectral_signatures_assume_the_rate_per_class_under_all_to_all():
    from jaxpoison.experiments.detectors import Victim, class_poison_share, target_class_share

    data = make_dataset(n=100, num_classes=10)
    one = Victim(None, data, None, 0, data, 0.1)
    assert class_poison_share(one) == target_class_share(0.1, 10) == pytest.approx(0.5)  # all poisons in one class
    assert class_poison_share(one._replace(all_to_all=True)) == 0.1  # a tenth of the poisons in each class


def test_a_collapsed_model_is_counted_not_averaged_into_psr():
    from jaxpoison.experiments.arena import collapsed, effective_psr, summarize

    def row(seed, psr_after, acc_after):
        r = _row("badnet", "rs", "delta_influence", seed, 0.5, psr_after)
        r.update(psr_before=0.97, clean_accuracy_before=0.86, clean_model_accuracy=0.87, cost_seconds=1.0)
        r["detection"].update(fpr=0.1, n_flagged=100)
        r["unlearning"]["eu"].update(clean_accuracy_after=acc_after, der=0.9, seconds=1.0)
        return r

    rows = [row(0, 0.02, 0.85), row(1, 0.0, 0.10), row(2, 0.04, 0.84)]  # seed 1: every image in one class
    assert effective_psr(rows[1], "eu") is None and collapsed(rows[1], "eu")
    assert effective_psr(rows[0], "eu") == 0.02 and not collapsed(rows[0], "eu")
    (entry,) = summarize(rows)["unlearning"]
    assert entry["collapsed"] == 1 and entry["psr_after"]["n"] == 2
    assert entry["psr_after"]["mean"] == pytest.approx(0.03)
    assert entry["clean_accuracy_after"]["n"] == 3  # the collapse stays visible in accuracy
