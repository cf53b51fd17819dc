"""Markdown tables of a run: detection (method × TPR/precision/AuROC/#flagged/seconds) and unlearning."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxpoison.detection.metrics import mask_from_indices
from jaxpoison.experiments.config import to_dict
from jaxpoison.experiments.detectors import LABELS
from jaxpoison.experiments.plots import detection_plots
from jaxpoison.fileio import atomic_write_text
from jaxpoison.runinfo import environment


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def detection_table(records: Mapping[str, dict], n_poisons: int | None = None) -> str:
    """One row per detector: precision, TPR, AuROC, number flagged, seconds."""
    lines = ["| method | precision | TPR | AuROC | #flagged | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for method, r in records.items():
        lines.append(f"| {LABELS.get(method, method)} | {_fmt(r['precision'])} | {_fmt(r['tpr'])} | "
                     f"{_fmt(r['auroc'])} | {r['n_flagged']} | {_fmt(r['seconds'], 1)} |")  # fmt: skip
    if n_poisons is not None:
        lines.append(f"\n{n_poisons} poisons in the training set.")
    return "\n".join(lines)


ORACLE_NOTE = (
    "oracle selection: the unlearner's candidate was chosen by poison success on triggered validation "
    "images, i.e. with knowledge of the attack that the defender does not have."
)


def unlearner_label(record: dict) -> str:
    """The unlearner's name in a table, marked when its candidate was chosen with the trigger (oracle)."""
    name = record["unlearner"]
    if name == "cf" and record.get("info", {}).get("reset_head"):
        name = "cf_reset"  # a record from before CF with a reset head became its own method
    if record.get("selection", record.get("info", {}).get("selection")) == "oracle":
        name += " (oracle selection)"
    return name


def unlearning_table(records: Sequence[dict], max_psr: float) -> str:
    """Detector × unlearner → poison success rate and clean accuracy; ✓ where PSR ≤ ``max_psr``.

    ``cf`` is the paper's CF and ``cf_reset`` CF with a re-initialised output layer; rows whose
    candidate was chosen with the trigger say "oracle selection", with a note under the table.
    """
    lines = [f"| detector | unlearner | PSR | clean accuracy | PSR ≤ {max_psr:g} | seconds |",
             "|---|---|---:|---:|:---:|---:|"]  # fmt: skip
    oracle = False
    for r in records:
        if r.get("diverged"):  # every candidate's outputs were non-finite: no model to measure
            lines.append(f"| {LABELS.get(r['detector'], r['detector'])} | {unlearner_label(r)} | diverged | — | ✗ | "
                         f"{_fmt(r.get('seconds'), 1)} |")  # fmt: skip
            continue
        ok = "✓" if r["psr"] <= max_psr else "✗"
        unlearner = unlearner_label(r)
        oracle = oracle or unlearner.endswith("(oracle selection)")
        lines.append(f"| {LABELS.get(r['detector'], r['detector'])} | {unlearner} | {_fmt(r['psr'])} | "
                     f"{_fmt(r['clean_accuracy'], 4)} | {ok} | {_fmt(r.get('seconds'), 1)} |")  # fmt: skip
    if oracle:
        lines.append(f"\n{ORACLE_NOTE}")
    return "\n".join(lines)


def _selection_line(selection: str) -> str:
    if selection == "oracle":
        return ("SSD, SCRUB and BadT choose their candidate with **oracle selection**: poison success on triggered "
                "validation images (knowledge of the attack).")  # fmt: skip
    return ("SSD, SCRUB and BadT choose their candidate on clean validation accuracy and the flagged points' labels "
            "(no knowledge of the attack).")  # fmt: skip


def stage_timings(store) -> dict:
    """Seconds per finished stage, and whether this invocation computed or reused it."""
    status = dict(store.events)
    out = {}
    for marker in sorted((store.root / "stages").glob("*/stage.json")):
        name = marker.parent.name.replace("__", ":")
        record = json.loads(marker.read_text())["record"]
        out[name] = {"seconds": record.get("stage_seconds"), "this_run": status.get(name, "not requested")}
    return out


def write_report(prepared, detection_records: dict, detections: dict, unlearn_records: list, seconds: float) -> dict:
    """Write ``report.json``, ``report.md`` and the plots into the run directory; return the report."""
    root = prepared.store.root
    config = prepared.config
    poisons = prepared.poisoning.poison_indices
    mask = mask_from_indices(poisons, len(prepared.poisoning.dataset))
    plots = detection_plots(detections, mask, root / "plots")
    report = {
        "config": to_dict(config),
        "seed": config.seed,
        "environment": environment(),
        "wall_seconds": seconds,
        "stages": stage_timings(prepared.store),
        "data": {
            "train": len(prepared.poisoning.dataset),
            "poisons": int(poisons.size),
            "validation": 0 if prepared.splits.validation is None else len(prepared.splits.validation),
            "test": len(prepared.splits.test),
        },
        "clean_model": prepared.clean_record,
        "victim": prepared.victim_record,
        "test_point": prepared.store.record("test_point"),
        "detection": detection_records,
        "unlearning": unlearn_records,
        # how SSD/SCRUB/BadT chose their candidates; "oracle" used the trigger (knowledge of the attack)
        "unlearning_selection": config.unlearning.selection,
        "plots": {k: str(Path(v).relative_to(root)) for k, v in plots.items()},
    }
    atomic_write_text(root / "report.json", json.dumps(report, indent=2, default=float))
    victim, clean = prepared.victim_record, prepared.clean_record
    lines = [
        f"# jaxpoison run: {config.attack.name} on {config.data.name}",
        "",
        f"- training set {report['data']['train']} images, {report['data']['poisons']} poisons "
        f"(target {'(y + 1) mod C' if prepared.poisoning.all_to_all else prepared.poisoning.target}); "
        f"validation {report['data']['validation']}; "
        f"test {report['data']['test']}",
        f"- unpoisoned model: clean accuracy {clean['clean_accuracy']:.4f}",
        f"- victim: poison success rate {victim['psr']:.3f}, clean accuracy {victim['clean_accuracy']:.4f}",
        f"- wall time {seconds:.0f} s",
        "",
        "## Detection",
        "",
        detection_table(detection_records),
        "",
        "## Unlearning",
        "",
        _selection_line(config.unlearning.selection),
        "",
        unlearning_table(unlearn_records, config.unlearning.max_psr) if unlearn_records else "(none requested)",
        "",
        "## Plots",
        "",
        *[f"- {k}: `{v}`" for k, v in report["plots"].items()],
        "",
    ]
    atomic_write_text(root / "report.md", "\n".join(lines))
    return report
