"""Figures of a run: ΔInfl per transformation (poisons vs clean) and ROC curves per detector; the arena's
heatmaps and cost-vs-score scatter."""

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


def _save(plt, fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (process 0 only: one process draws a shared file) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_writer():
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


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
    return _save(plt, fig, path)


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
    return _save(plt, fig, path)


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


def plot_heatmap(
    values: np.ndarray, rows: Sequence[str], columns: Sequence[str], path: str | Path, *, title: str = "",
    vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis", digits: int = 2,
) -> Path:  # fmt: skip
    """A ``rows × columns`` heatmap with each value written in its cell; NaN cells read "n/a" on grey.

    Args:
      values: ``[len(rows), len(columns)]`` floats (NaN where there is no value).
      rows / columns: the axis labels.
      path: the PNG to write.
      title: the figure title.
      vmin / vmax: the colour scale's range (``None``: the data's).
      cmap: a matplotlib colour map name.
      digits: decimals of the written values.
    """
    plt = _pyplot()
    values = np.asarray(values, np.float64)
    if values.shape != (len(rows), len(columns)):
        raise ValueError(f"values of shape {values.shape} do not match {len(rows)} rows × {len(columns)} columns.")
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 3, 0.5 * len(rows) + 1.8))
    colours = plt.get_cmap(cmap).with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = values[i, j]
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.{digits}f}", ha="center", va="center", fontsize=8,
                    color="0.3" if np.isnan(value) else "w" if image.norm(value) < 0.5 else "k")  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(plt, fig, path)


def plot_cost_vs_score(
    points: Mapping[str, tuple[float, float, float, float]], path: str | Path, *, ylabel: str = "score",
    title: str = "", ylim: tuple[float, float] | None = None,
) -> Path:  # fmt: skip
    """A scatter of methods by cost (seconds, log scale) against a score, with error bars.

    Args:
      points: ``{label: (seconds, score, seconds std, score std)}``.
      path: the PNG to write.
      ylabel: what the score is (e.g. ``"F1"``).
      title: the figure title.
      ylim: the score axis's range (``None``: the data's).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (x, y, xerr, yerr) in points.items():
        ax.errorbar([max(x, 1e-3)], [y], xerr=[xerr], yerr=[yerr], fmt="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per detection (incl. the EK-FAC fit it needs)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, path)
