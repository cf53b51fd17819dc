"""Paired differences over seeds, with a t-interval: how "A beats B" is stated in reports.

Two methods run on the same seeds share each seed's victim, poisons and draws; their
difference per seed cancels the seed-to-seed spread, which is often larger than the gap
between the methods. ``scipy`` comes with ``jax``.

Examples:
  >>> s = paired_stats([0.10, 0.12, 0.08])
  >>> round(s["mean"], 3), s["wins"], round(s["ci_low"], 3), round(s["ci_high"], 3)
  (0.1, 3, 0.05, 0.15)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def paired_stats(diffs: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of paired differences with a t-interval over the pairs.

    ``std`` uses ``n − 1``; the interval is ``mean ± t_{(1+confidence)/2, n−1} · std / √n``
    and ``p_value`` the two-sided paired t-test of a zero mean. With one pair the spread,
    interval and p-value are ``None``. ``wins``/``losses``/``ties``: pairs above, below, at 0.

    Raises:
      ValueError: ``confidence`` outside (0, 1), or a difference that is not finite.
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence!r}.")
    d = np.asarray(diffs, np.float64).reshape(-1)
    if not np.all(np.isfinite(d)):
        raise ValueError(f"paired differences must be finite; got {d.tolist()}.")
    n = int(d.size)
    out = {"n": n, "mean": float(d.mean()) if n else None, "std": None, "sem": None, "t_quantile": None,
           "ci_low": None, "ci_high": None, "p_value": None, "confidence": confidence,
           "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0)), "ties": int(np.sum(d == 0))}  # fmt: skip
    if n < 2:
        return out
    std = float(d.std(ddof=1))
    sem = std / math.sqrt(n)
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    if sem > 0:
        p = float(2 * stats.t.sf(abs(out["mean"]) / sem, n - 1))
    else:  # every pair equal: no spread to test against
        p = 1.0 if out["mean"] == 0 else 0.0
    out.update(std=std, sem=sem, t_quantile=t, ci_low=out["mean"] - t * sem, ci_high=out["mean"] + t * sem,
               p_value=p)  # fmt: skip
    return out


def format_paired(s: dict, digits: int = 3) -> str:
    """``+0.011 [−0.003, +0.025] (6/10)``: mean [interval] (pairs ahead / pairs); ``–`` with none."""
    if not s or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:+.{digits}f}"
    if s.get("ci_low") is not None:
        text += f" [{s['ci_low']:+.{digits}f}, {s['ci_high']:+.{digits}f}]"
    return f"{text} ({s['wins']}/{s['n']})"
