"""Markdown tables of a run: detection (method × TPR/precision/AuROC/#flagged/seconds) and unlearning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxpoison.experiments.detectors import LABELS


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


def unlearning_table(records: Sequence[dict], max_psr: float) -> str:
    """Detector × unlearner → poison success rate and clean accuracy; ✓ where PSR ≤ ``max_psr``."""
    lines = [f"| detector | unlearner | PSR | clean accuracy | PSR ≤ {max_psr:g} | seconds |",
             "|---|---|---:|---:|:---:|---:|"]  # fmt: skip
    for r in records:
        ok = "✓" if r["psr"] <= max_psr else "✗"
        lines.append(f"| {LABELS.get(r['detector'], r['detector'])} | {r['unlearner']} | {_fmt(r['psr'])} | "
                     f"{_fmt(r['clean_accuracy'], 4)} | {ok} | {_fmt(r.get('seconds'), 1)} |")  # fmt: skip
    return "\n".join(lines)
