"""A preset over several seeds: detection, unlearning and the no-poison control, as mean ± std.

    python benchmarks/seeds.py fmnist-badnet --seeds 3 --runs runs/seeds/fmnist-badnet \
        --out benchmarks/results/seeds_fmnist_badnet.json [--set KEY=VALUE ...] [--points-row 3]

Each seed is one ``jaxpoison run`` directory (``RUNS/seedS``): the seed changes the poison
choice, the victim's initialisation and batch order, and every detector's randomness.
A killed benchmark resumes where it stopped, because every stage is reused from its run
store; the JSON is rewritten after every seed, so finished seeds are never lost, and a
later invocation with other seeds (or other unlearners) adds to it; each seed records the
overrides it ran with.

Besides the preset's own detection setting, ``--points-row K`` adds one row: Δ-Influence
from the first K identified test points with their flags intersected (the paper's
Tables 4–5), on the same victim and factors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxpoison.detection.metrics import detection_metrics
from jaxpoison.experiments.config import apply_overrides, to_dict
from jaxpoison.experiments.control import control_stage
from jaxpoison.experiments.detectors import run_detector
from jaxpoison.experiments.pipeline import prepare, run_pipeline
from jaxpoison.experiments.presets import get_preset
from jaxpoison.experiments.stats import format_paired, paired_stats
from jaxpoison.experiments.victim import pick_test_points
from jaxpoison.runinfo import environment

METRICS = ("tpr", "precision", "auroc", "fpr", "n_flagged", "seconds")


def points_row(prepared, count: int, progress: bool) -> dict:
    """Δ-Influence from ``count`` test points (flags intersected), cached in the run directory."""
    path = prepared.store.root / f"delta_influence_{count}_points.json"
    key = {"victim": prepared.keys["victim"], "factors": prepared.keys["factors"], "count": count,
           "detection": to_dict(prepared.config.detection)}  # fmt: skip
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["record"]
    config = prepared.config
    _, images = pick_test_points(prepared.victim.model, prepared.poisoning, config.attack.source,
                                 prepared.splits.test, count)  # fmt: skip
    victim = prepared.victim._replace(test_images=images)
    found = run_detector("delta_influence", victim, prepared.factors, config.detection, seed=config.seed,
                         progress=progress)  # fmt: skip
    record = detection_metrics(found.flagged, prepared.poisoning.poison_indices, len(prepared.poisoning.dataset),
                               found.scores, found.seconds)  # fmt: skip
    path.write_text(json.dumps({"key": key, "record": record}, indent=2, default=float))
    return record


def mean_std(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "n": int(array.size), "values": array.tolist()}  # fmt: skip


def summarise(seeds: list[dict]) -> dict:
    """Mean ± std (sample std) over seeds of every detector, unlearning and control metric."""
    out: dict = {"victim": {}, "clean_model": {}, "detection": {}, "unlearning": {}, "control": {}}
    for part, keys in (("victim", ("psr", "clean_accuracy")), ("clean_model", ("clean_accuracy",))):
        out[part] = {k: mean_std([s[part].get(k) for s in seeds]) for k in keys}
    for section in ("detection", "control"):
        methods = dict.fromkeys(m for s in seeds for m in s[section])
        for m in methods:
            out[section][m] = {k: mean_std([s[section].get(m, {}).get(k) for s in seeds]) for k in METRICS}
    rows = dict.fromkeys((r["detector"], r["unlearner"]) for s in seeds for r in s["unlearning"])
    for detector, unlearner in rows:
        found = [r for s in seeds for r in s["unlearning"] if (r["detector"], r["unlearner"]) == (detector, unlearner)]
        out["unlearning"][f"{detector}/{unlearner}"] = {
            k: mean_std([r.get(k) for r in found]) for k in ("psr", "clean_accuracy", "seconds")
        }
    out["paired"] = paired_against(seeds, "delta_influence")
    return out


def paired_against(seeds: list[dict], reference: str) -> dict:
    """``reference`` minus every other detector, paired by seed: TPR, precision and AuROC."""
    out = {}
    others = dict.fromkeys(m for s in seeds for m in s["detection"] if m != reference)
    for m in others:
        both = [s["detection"] for s in seeds if reference in s["detection"] and m in s["detection"]]
        out[m] = {k: paired_stats([d[reference][k] - d[m][k] for d in both
                                   if d[reference].get(k) is not None and d[m].get(k) is not None])
                  for k in ("tpr", "precision", "auroc")}  # fmt: skip
    return out


def _fmt(stat: dict | None, digits: int = 3) -> str:
    return "–" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def print_tables(summary: dict) -> None:
    print("| detector | TPR | precision | AuROC | #flagged | no-poison control #flagged |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, r in summary["detection"].items():
        control = summary["control"].get(m, {}).get("n_flagged")
        print(f"| {m} | {_fmt(r['tpr'])} | {_fmt(r['precision'])} | {_fmt(r['auroc'])} | "
              f"{_fmt(r['n_flagged'], 0)} | {_fmt(control, 0)} |")  # fmt: skip
    print("\n| Δ-Influence minus | TPR | precision | AuROC |\n|---|---|---|---|")
    for m, r in summary.get("paired", {}).items():
        print(f"| {m} | {format_paired(r['tpr'])} | {format_paired(r['precision'])} | {format_paired(r['auroc'])} |")
    print("\n| detector/unlearner | PSR | clean accuracy |\n|---|---:|---:|")
    for k, r in summary["unlearning"].items():
        print(f"| {k} | {_fmt(r['psr'])} | {_fmt(r['clean_accuracy'], 4)} |")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--runs", required=True, help="directory of the per-seed run directories")
    parser.add_argument("--out", required=True, help="JSON file of per-seed records and the summary")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--points-row", type=int, default=0, help="add Δ-Influence from K intersected test points")
    parser.add_argument("--no-control", action="store_true", help="skip the no-poison control")
    parser.add_argument("--control-methods", default=None,
                        help="comma-separated detectors for the control (default: every detector that ran)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.quiet
    results = {"preset": args.preset, "overrides": args.overrides, "environment": environment(), "seeds": []}
    if Path(args.out).exists():  # keep the other seeds of an earlier invocation (e.g. with fewer unlearners)
        earlier = json.loads(Path(args.out).read_text())
        if earlier.get("preset") != args.preset:
            raise SystemExit(f"{args.out} holds preset {earlier.get('preset')!r}; choose another --out.")
        results["seeds"] = earlier["seeds"]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = apply_overrides(get_preset(args.preset), [*args.overrides, f"seed={seed}"])
        directory = Path(args.runs) / f"seed{seed}"
        start = time.perf_counter()
        report = run_pipeline(config, directory, force=True, progress=progress)
        prepared = prepare(config, directory, force=True, progress=progress)  # every stage is reused
        record = {"seed": seed, "victim": report["victim"], "clean_model": report["clean_model"],
                  "data": report["data"], "detection": report["detection"], "unlearning": report["unlearning"],
                  "control": {}, "config": to_dict(config)}  # fmt: skip
        if args.points_row:
            name = f"delta_influence ({args.points_row} points)"
            record["detection"][name] = points_row(prepared, args.points_row, progress)
        if not args.no_control:
            methods = args.control_methods.split(",") if args.control_methods else config.detection.methods
            record["control"] = control_stage(prepared, tuple(methods), progress=progress)
        record["seconds"] = time.perf_counter() - start
        record["overrides"] = args.overrides
        others = [r for r in results["seeds"] if r["seed"] != seed]
        results["seeds"] = sorted([*others, record], key=lambda r: r["seed"])
        results["summary"] = summarise(results["seeds"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
        print(f"seed {seed} done in {record['seconds']:.0f} s", flush=True)
    print_tables(results["summary"])
    return results


if __name__ == "__main__":
    main()
