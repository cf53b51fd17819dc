"""Figures of a run: ΔInfl per transformation (poisons vs clean) and ROC curves per detector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxpoison.detection.metrics import auroc, roc_curve
from jaxpoison.distributed import is_writer


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_delta_by_transform(
    delta: np.ndarray, transforms: Sequence[str | None], poison_mask: np.ndarray, path: str | Path, *,
    title: str = "ΔInfl per transformation", max_clean: int = 5000, seed: int = 0,
) -> Path:  # fmt: skip
    """Box plots of ΔInfl = new − old for poisons and clean points, one pair per transformation.

    The Δ-Influence paper's Figure 2: poisons' influence collapses (ΔInfl ≪ 0) under every
    transformation, clean points scatter around zero. ``delta`` is ``[n_b, N]``; a random
    ``max_clean`` clean points are drawn to keep the figure light. The y-axis is symlog.
    """
    plt = _pyplot()
    delta = np.asarray(delta)
    poison_mask = np.asarray(poison_mask, bool)
    names = np.array(["label only" if t is None else t for t in transforms])
    clean = np.flatnonzero(~poison_mask)
    rng = np.random.default_rng(seed)
    clean = np.sort(rng.choice(clean, min(max_clean, clean.size), replace=False))
    groups = sorted(set(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 2, 4))
    positions = np.arange(len(groups)) * 3.0
    for offset, columns, color, label in ((-0.5, np.flatnonzero(poison_mask), "tab:red", "poisons"),
                                          (0.5, clean, "tab:blue", "clean")):  # fmt: skip
        data = [delta[names == g][:, columns].ravel() for g in groups]
        parts = ax.boxplot(data, positions=positions + offset, widths=0.8, patch_artist=True, showfliers=False)
        for box in parts["boxes"]:
            box.set(facecolor=color, alpha=0.5)
        ax.plot([], [], color=color, lw=6, alpha=0.5, label=label)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(positions, [f"{g}\n(n={int((names == g).sum())})" for g in groups], fontsize=8)
    ax.set_ylabel("ΔInfl (new − old)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_writer():  # one process draws the shared file
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_roc(
    scores: Mapping[str, np.ndarray], poison_mask: np.ndarray, path: str | Path, *, title: str = "ROC"
) -> Path:
    """ROC curves of every detector's continuous score, with AuROC in the legend."""
    plt = _pyplot()
    poison_mask = np.asarray(poison_mask, bool)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, values in scores.items():
        fpr, tpr, _ = roc_curve(values, poison_mask)
        ax.plot(fpr, tpr, label=f"{name} ({auroc(values, poison_mask):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_writer():  # one process draws the shared file
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def detection_plots(
    detections: Mapping, poison_mask: np.ndarray, directory: str | Path, *, suffix: str = "", title: str = ""
) -> dict[str, Path]:
    """The ROC curves of every detection and, when Δ-Influence ran, its ΔInfl-per-transformation plot.

    ``detections`` maps detector names to :class:`~jaxpoison.experiments.detectors.Detection`;
    files are ``roc{suffix}.png`` and ``delta_by_transform{suffix}.png`` in ``directory``.
    """
    from jaxpoison.experiments.detectors import LABELS

    directory = Path(directory)
    plots = {}
    if detections:
        plots["roc"] = plot_roc({LABELS.get(m, m): d.scores for m, d in detections.items()}, poison_mask,
                                directory / f"roc{suffix}.png", title=f"Detectors: ROC{title}")  # fmt: skip
    delta = detections.get("delta_influence")
    if delta is not None and "delta" in delta.extra:
        plots["delta_by_transform"] = plot_delta_by_transform(
            delta.extra["delta"], delta.extra["transforms"], poison_mask,
            directory / f"delta_by_transform{suffix}.png", title=f"ΔInfl per transformation{title}",
        )  # fmt: skip
    return plots
