"""The IFS sweep's baselines at a stated budget: FUS's forgetting-event histogram, RD's random share,
HFE in both sort orders, and the benchmark's equal-time budget, paired CIs and JSON records."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jaxpoison.attacks import blended, poison_dataset, square_patch
from jaxpoison.selection import (
    FUSConfig,
    HFEConfig,
    RDConfig,
    SelectionError,
    event_histogram,
    final_refill,
    fus_selection,
    hfe_ranking,
    hfe_scores,
    hfe_selection,
    rd_selection,
    select_poisons,
    triggered,
)
from tests.conftest import make_dataset

TINY = {"width": 4, "hidden": 16}


def load_benchmark():
    """``benchmarks/ifs.py`` as a module (``benchmarks`` is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ifs.py"
    spec = importlib.util.spec_from_file_location("ifs_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_data():
    return make_dataset(n=120, shape=(8, 8, 1), num_classes=4)


# --------------------------------------------------------------------------- FUS: forgetting-event histogram


def test_event_histogram_counts_each_number_of_events():
    assert event_histogram([0, 2, 1, 0, 0, 3]) == [3, 1, 1, 1]
    assert event_histogram(np.zeros(4, np.int64)) == [4]
    assert event_histogram([]) == []
    with pytest.raises(SelectionError, match="non-negative integers"):
        event_histogram([1, -1])


def test_fus_reports_the_event_histogram_of_candidates_and_selection(monkeypatch):
    # Replace the measured events by a known function of each poison's training index.
    import jaxpoison.selection.forgetting as fus

    data = tiny_data()
    events_of = lambda idx: np.asarray(idx) % 3
    seen = {}

    def spy(dataset, trigger, config):
        out = poison_dataset(dataset, trigger, config)
        seen["sources"] = out.source_indices
        return out

    monkeypatch.setattr(fus, "poison_dataset", spy)
    monkeypatch.setattr(fus, "count_forgetting_events", lambda correct: events_of(seen["sources"]))
    config = FUSConfig(rounds=2, epochs=4, model_kwargs=TINY, batch_size=40)
    sel = fus_selection(data, square_patch(data.image_shape, size=2), 0, 0.1, config, seed=5, progress=False)
    events = sel.info["events"]
    last = events_of(seen["sources"])  # the 12 candidates of the last round
    kept = sel.indices[~np.isnan(sel.scores)]
    assert events["candidates"] == np.bincount(last).tolist() and sum(events["candidates"]) == 12
    assert events["selected"] == np.bincount(events_of(kept), minlength=1).tolist()
    assert sum(events["selected"]) == 6 and events["refilled"] == 6
    assert events["max_possible"] == 2  # 4 epochs: 1 0 1 0
    # The kept poisons at the cut-off value whose group was split were chosen by the tie-break.
    cutoff = events_of(kept).min()
    split = np.sum(last == cutoff) > np.sum(events_of(kept) == cutoff)
    assert events["kept_by_tie_break"] == (int(np.sum(events_of(kept) == cutoff)) if split else 0)
    assert sel.info["refilled_share"] == 0.5
    assert [len(r["events_histogram"]) > 0 for r in sel.info["rounds"]] == [True, True]


# --------------------------------------------------------------------------- RD: the random share


def test_final_refill_is_the_last_rounds_replacement():
    # The audit's figures: 3 rounds leave 43 % random, the reference's 30 rounds about 6 %.
    assert final_refill(100, rounds=3, ratio=0.5, decay=0.93) == 43
    assert final_refill(100, rounds=30, ratio=0.5, decay=0.93) == 6
    assert final_refill(12, rounds=1, ratio=0.5, decay=0.93) == 6


def test_rd_reports_the_share_of_the_final_set_that_is_still_random():
    data = tiny_data()
    config = RDConfig(rounds=3, score_epochs=1, model_kwargs=TINY, batch_size=40)
    sel = rd_selection(data, blended(data.image_shape, 0.2), 0, 0.1, config, seed=2, progress=False)
    refilled = int(12 * 0.5 * 0.93**2 + 0.5)
    assert refilled == final_refill(12, 3, 0.5, 0.93) == 5
    assert sel.info["refilled"] == refilled == int(np.isnan(sel.scores).sum())
    assert sel.info["refilled_share"] == pytest.approx(refilled / 12)
    in_initial = np.isin(sel.indices, sel.info["initial"]).mean()
    assert sel.info["initial_share"] == pytest.approx(in_initial)


# --------------------------------------------------------------------------- HFE: both sort orders


def test_hfe_ranking_ascending_is_the_reverse_of_descending():
    scores = np.random.default_rng(0).random(50)
    down, up = hfe_ranking(scores, "descending"), hfe_ranking(scores, "ascending")
    np.testing.assert_array_equal(up, down[::-1])
    assert scores[down[0]] == scores.max() and scores[up[0]] == scores.min()
    # ties go to the lower index in both orders
    np.testing.assert_array_equal(hfe_ranking(np.array([1.0, 2.0, 1.0]), "ascending"), [0, 2, 1])
    np.testing.assert_array_equal(hfe_ranking(np.array([1.0, 2.0, 1.0]), "descending"), [1, 0, 2])
    with pytest.raises(SelectionError, match="order must be"):
        hfe_ranking(scores, "sideways")


def test_hfe_ascending_selection_takes_the_lowest_energy_candidates():
    data = tiny_data()
    trigger = blended(data.image_shape, 0.2)
    down = hfe_selection(data, trigger, 0, 0.1)
    up = hfe_selection(data, trigger, 0, 0.1, order="ascending")
    pool = up.info["candidates"]
    scores = hfe_scores(triggered(data, pool, trigger, 0).images)
    k = 12
    np.testing.assert_array_equal(up.indices, np.sort(pool[np.argsort(scores)[:k]]))
    np.testing.assert_array_equal(down.indices, np.sort(pool[np.argsort(-scores)[:k]]))
    assert up.scores.max() < down.scores.min()
    assert (up.info["order"], down.info["order"]) == ("ascending", "descending")
    # registered under its own name, and as a config of "hfe"
    by_name = select_poisons("hfe_asc", data, trigger, 0, 0.1)
    by_config = select_poisons("hfe", data, trigger, 0, 0.1, HFEConfig(order="ascending"))
    np.testing.assert_array_equal(by_name.indices, up.indices)
    np.testing.assert_array_equal(by_config.indices, up.indices)
    with pytest.raises(SelectionError, match="order must be"):
        HFEConfig(order="up")


# --------------------------------------------------------------------------- benchmark: equal-time budget


def test_equal_time_budget_fills_the_time_with_rounds_of_fixed_epochs():
    bench = load_benchmark()
    # IFS took 120 s, a proxy epoch takes 10 s: 12 epochs.
    rd = bench.equal_time_budget(120.0, 10.0, epochs_per_round=2, max_rounds=30, max_epochs=6)
    assert (rd["rounds"], rd["epochs"], rd["total_epochs"]) == (6, 2, 12)
    assert rd["mode"] == "equal-time" and rd["target_seconds"] == 120.0 and not rd["capped"]
    fus = bench.equal_time_budget(125.0, 10.0, epochs_per_round=6, max_rounds=10, max_epochs=70, min_epochs=2)
    assert (fus["rounds"], fus["epochs"]) == (2, 6)
    # Less time than one round: one shorter round, never below the method's minimum.
    short = bench.equal_time_budget(30.0, 10.0, epochs_per_round=6, max_rounds=10, max_epochs=70, min_epochs=2)
    assert (short["rounds"], short["epochs"]) == (1, 3)
    floor = bench.equal_time_budget(5.0, 10.0, epochs_per_round=6, max_rounds=10, max_epochs=70, min_epochs=2)
    assert (floor["rounds"], floor["epochs"]) == (1, 2) and floor["over_time"]
    # Rounds at the published count: the remaining time lengthens each round instead.
    long = bench.equal_time_budget(300.0, 1.0, epochs_per_round=6, max_rounds=10, max_epochs=70, min_epochs=2)
    assert (long["rounds"], long["epochs"]) == (10, 30) and not long["capped"]
    # More time than the published budget: the published budget, marked as capped.
    rich = bench.equal_time_budget(1e6, 1.0, epochs_per_round=6, max_rounds=30, max_epochs=6)
    assert (rich["rounds"], rich["epochs"]) == (30, 6) and rich["capped"]
    with pytest.raises(ValueError, match="positive"):
        bench.equal_time_budget(100.0, 0.0, epochs_per_round=2, max_rounds=30, max_epochs=6)


def test_selection_configs_follow_the_budget_mode():
    bench = load_benchmark()
    published = bench.method_config("fus", bench.published_budget("fus"), surrogate_epochs=3)
    assert (published.rounds, published.epochs, published.keep_fraction) == (10, 70, 0.5)
    rd = bench.method_config("rd", bench.published_budget("rd"), surrogate_epochs=3)
    assert (rd.rounds, rd.score_epochs, rd.ratio, rd.decay) == (30, 6, 0.5, 0.93)
    budget = {"mode": "equal-time", "rounds": 4, "epochs": 3}
    assert bench.method_config("rd", budget, surrogate_epochs=3).rounds == 4
    assert bench.method_config("hfe_asc", None, surrogate_epochs=3) == HFEConfig(order="ascending")


# --------------------------------------------------------------------------- benchmark: paired statistics


def test_paired_interval_matches_a_hand_computation():
    bench = load_benchmark()
    diffs = [0.10, 0.20, 0.00, 0.30, 0.15]
    # mean 0.15; squared deviations sum to 0.05, so s² = 0.05 / 4 and the standard error is 0.05.
    t975_4 = 2.7764451051977987  # Student t, 4 degrees of freedom, 97.5 % quantile (tables: 2.776)
    stats = bench.paired_stats(diffs)
    assert stats["n"] == 5 and stats["wins"] == 4 and stats["ties"] == 1 and stats["losses"] == 0
    assert stats["mean"] == pytest.approx(0.15)
    assert stats["std"] == pytest.approx(math.sqrt(0.0125))
    assert stats["t_quantile"] == pytest.approx(t975_4, rel=1e-9)
    assert stats["ci_low"] == pytest.approx(0.15 - t975_4 * 0.05)
    assert stats["ci_high"] == pytest.approx(0.15 + t975_4 * 0.05)
    # two-sided paired t: t = 3, 4 dof
    assert stats["p_value"] == pytest.approx(0.039941, abs=1e-5)
    one = bench.paired_stats([0.2])
    assert one["n"] == 1 and one["ci_low"] is None and one["ci_high"] is None


def test_paired_rows_pair_by_seed_against_rs_and_rd():
    bench = load_benchmark()

    def record(method, asr_by_seed):
        runs = [{"seed": s, "asr": a} for s, a in asr_by_seed.items()]
        return {"sweep": "rate", "epsilon": 0.1, "rate": 0.01, "method": method, "runs": runs}

    results = [record("rs", {0: 0.1, 1: 0.2, 2: 0.3}), record("rd", {0: 0.2, 1: 0.2}),
               record("ifs", {2: 0.5, 0: 0.1, 1: 0.4})]  # fmt: skip
    vs_rs = {r["method"]: r for r in bench.paired_rows(results, "rs")}
    assert set(vs_rs) == {"rd", "ifs"}
    assert vs_rs["ifs"]["seeds"] == 3 and vs_rs["ifs"]["asr_diff_mean"] == pytest.approx((0.0 + 0.2 + 0.2) / 3)
    assert vs_rs["ifs"]["wins"] == 2 and vs_rs["ifs"]["baseline"] == "rs"
    vs_rd = {r["method"]: r for r in bench.paired_rows(results, "rd")}
    assert set(vs_rd) == {"rs", "ifs"}
    assert vs_rd["ifs"]["seeds"] == 2  # RD ran seeds 0 and 1 only
    assert vs_rd["ifs"]["asr_diff_mean"] == pytest.approx((-0.1 + 0.2) / 2)


def test_json_safe_keeps_small_arrays_and_summarises_large_ones():
    bench = load_benchmark()
    info = {"initial": np.arange(3), "scores": np.array([1.0, np.nan]), "quota": {1: 2, 2: 3},
            "config": {"model_kwargs": {}}, "big": np.zeros(50), "x": np.float32(0.5), "t": (1, 2),
            "inf": math.inf}  # fmt: skip
    safe = bench.json_safe(info, array_limit=10)
    assert safe["initial"] == [0, 1, 2] and safe["scores"] == [1.0, None]
    assert safe["quota"] == {"1": 2, "2": 3} and safe["t"] == [1, 2] and safe["x"] == 0.5 and safe["inf"] is None
    assert safe["big"]["shape"] == [50] and safe["big"]["mean"] == 0.0 and safe["big"]["omitted"]
    json.dumps(safe, allow_nan=False)  # strict JSON


def test_resume_reads_older_files_and_refuses_another_budget(tmp_path):
    bench = load_benchmark()
    # A file of the earlier sweeps: no budget mode, runs without a seed key (seeds 0, 1 in order).
    runs = [
        {"asr": 0.1, "class_asr_variance": 0.0, "clean_accuracy": 0.9, "selection_seconds": 1.0, "seconds": 2.0},
        {"asr": 0.3, "class_asr_variance": 0.0, "clean_accuracy": 0.9, "selection_seconds": 1.0, "seconds": 2.0},
    ]
    old = {
        "dataset": "digits",
        "train_size": 10,
        "target": 0,
        "victim_epochs": 1,
        "budget": {"rounds": 3, "proxy_epochs": 2, "surrogate_epochs": 3},
        "results": [{"sweep": "rate", "epsilon": 0.1, "rate": 0.01, "method": "rs", "poisons": 1, "runs": runs}],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    out = {k: old[k] for k in ("dataset", "train_size", "target", "victim_epochs")}
    done = bench._finished(path, {**out, "budget": {"mode": "fixed", **old["budget"]}})
    assert [r["seed"] for r in done[("rate", 0.1, 0.01, "rs")]["runs"]] == [0, 1]
    with pytest.raises(SystemExit, match="different sweep"):
        bench._finished(path, {**out, "budget": {"mode": "equal-time", "surrogate_epochs": 3}})


def test_cell_summary_adds_fus_histograms_and_random_shares_over_seeds():
    bench = load_benchmark()
    base = {"class_asr_variance": 0.0, "clean_accuracy": 0.9, "selection_seconds": 5.0, "seconds": 9.0}
    events = [
        {"candidates": [5, 3], "selected": [2, 3], "kept_by_tie_break": 2, "max_possible": 1},
        {"candidates": [4, 3, 1], "selected": [1, 3, 1], "kept_by_tie_break": 1, "max_possible": 3},
    ]
    runs = [{**base, "seed": 1, "asr": 0.4, "budget": {"mode": "equal-time", "rounds": 1, "epochs": 6},
             "info": {"events": events[1], "refilled_share": 0.5}},
            {**base, "seed": 0, "asr": 0.2, "budget": {"mode": "equal-time", "rounds": 1, "epochs": 2},
             "info": {"events": events[0], "refilled_share": 0.5}}]  # fmt: skip
    record = bench.summarize("rate", 0.1, 0.01, "fus", 5, runs)
    assert record["asr_per_seed"] == {"0": 0.2, "1": 0.4} and [r["seed"] for r in record["runs"]] == [0, 1]
    assert record["fus_events"]["candidates"] == [9, 6, 1] and record["fus_events"]["selected"] == [3, 6, 1]
    assert record["fus_events"]["kept_by_tie_break"] == 1.5 and record["fus_events"]["max_possible"] == [1, 3]
    assert record["refilled_share"] == 0.5
    assert record["budget"] == {"mode": ["equal-time"], "rounds_x_epochs": ["1x2", "1x6"]}


def test_paired_stats_refuses_what_it_cannot_test():
    from jaxpoison.experiments.stats import format_paired, paired_stats

    with pytest.raises(ValueError, match="must be finite"):
        paired_stats([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\)"):
        paired_stats([0.1, 0.2], confidence=95)
    assert format_paired(paired_stats([0.2])) == "+0.200 (1/1)" and format_paired({}) == "–"
