"""Poison detection on one victim: Δ-Influence, its ablations and the baselines, side by side.

Poisons the training set (BadNet, blended or smooth trigger; 1 % all-to-one toward class 0),
trains the CNN victim, picks the first ``detection.test_points`` triggered test images it
assigns to the target (the preset's number; ``--set detection.test_points=1`` for the
paper's single-point setting), fits EK-FAC factors once, then runs every detector and
records ``tpr``, ``precision``, ``auroc``, ``n_flagged`` and ``seconds`` (factor fit
excluded; it is shared and reported once as ``factor_seconds``). ``delta_over_ekfac_seconds``
is Δ-Influence's time (k·51 queries in one pass) over the EK-FAC threshold's (k queries,
one pass).

The run directory keeps every stage (victim, factors, each detector), so a second run with
the same settings only re-does what changed.

Usage:
  python benchmarks/detect.py --dataset fashion_mnist --attack badnet --out runs/detect_badnet.json
  python benchmarks/detect.py --dataset digits --attack badnet --out /tmp/detect.json   # quick, same code path
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxpoison.detection import mask_from_indices
from jaxpoison.experiments.config import apply_overrides
from jaxpoison.experiments.pipeline import detect_stage, prepare
from jaxpoison.experiments.plots import detection_plots
from jaxpoison.experiments.presets import get_preset
from jaxpoison.experiments.registry import ALL_DETECTORS
from jaxpoison.experiments.report import detection_table
from jaxpoison.runinfo import environment

METHODS = (*ALL_DETECTORS, "spectral_reference")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--attack", default="badnet", choices=("badnet", "blended", "smooth"))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated detectors")
    parser.add_argument("--run-dir", default=None, help="stage directory (default runs/detect-DATASET-ATTACK)")
    parser.add_argument("--figures", default=None, help="where to write the plots (default: next to --out)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    preset = "digits-badnet-tiny" if args.dataset == "digits" else f"fmnist-{args.attack}"
    config = get_preset(preset)
    methods = tuple(m for m in args.methods.split(",") if m)
    config = dataclasses.replace(config, attack=dataclasses.replace(config.attack, name=args.attack),
                                 detection=dataclasses.replace(config.detection, methods=methods))  # fmt: skip
    config = apply_overrides(config, args.set)
    run_dir = Path(args.run_dir or f"runs/detect-{args.dataset}-{args.attack}")
    prepared = prepare(config, run_dir, force=True)
    factor_seconds = (prepared.store.record("factors") or {}).get("stage_seconds")

    records, detections = {}, {}
    for method in methods:
        record, detection = detect_stage(prepared, method)
        records[method] = {k: record[k] for k in ("tpr", "precision", "auroc", "n_flagged", "seconds", "fpr")}
        detections[method] = detection
        print(f"{method:24s} TPR {record['tpr']:.3f}  precision {record['precision']:.3f}  "
              f"AuROC {record['auroc']:.3f}  flagged {record['n_flagged']:6d}  {record['seconds']:.1f}s")  # fmt: skip

    poisons = prepared.poisoning.poison_indices
    n = len(prepared.poisoning.dataset)
    mask = mask_from_indices(poisons, n)
    figures = Path(args.figures or Path(args.out).parent)
    label = f" ({args.dataset}, {args.attack})"
    plots = {k: str(v) for k, v in detection_plots(detections, mask, figures, suffix=f"_{args.dataset}_{args.attack}",
                                                   title=label).items()}  # fmt: skip
    ratio = None
    if "delta_influence" in records and "ekfac" in records:
        ratio = records["delta_influence"]["seconds"] / records["ekfac"]["seconds"]
    out = {
        "dataset": args.dataset,
        "attack": args.attack,
        "n_train": n,
        "n_poisons": int(poisons.size),
        "victim": prepared.victim_record,
        "clean_model": prepared.clean_record,
        "test_point": prepared.store.record("test_point"),
        "factor_seconds": factor_seconds,
        "delta_over_ekfac_seconds": ratio,
        "methods": records,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "plots": plots,
        "environment": environment(),
    }
    print(detection_table(records, int(poisons.size)))
    print(f"victim PSR {prepared.victim_record['psr']:.3f}, factor fit {factor_seconds}, Δ/EK-FAC time {ratio}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
