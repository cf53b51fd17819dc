"""HFE: high-frequency-energy screening.

The IFS paper compares against an "HFE" baseline but no public code or precise definition
of it could be found. **This definition is jaxpoison's own:**

    HFE(x) = Σ_{c} Σ_{u² + v² > r²} X_c[u, v]²  /  Σ_{c} Σ_{u, v} X_c[u, v]²

where ``X_c = D_H · x̃_c · D_Wᵀ`` is the orthonormal 2-D DCT-II of channel ``c`` of the
*triggered* image ``x̃ = trigger(x)`` (pixel space, [0, 1]), ``u`` and ``v`` are the row and
column frequency indices (0 = DC), and ``r`` is a low-frequency radius in DCT index units,
by default ``min(H, W) / 4``. HFE lies in [0, 1] (an all-black image, which has no energy,
scores 0). By Parseval the denominator equals the image's pixel energy ``Σ x̃²``.

The selection ranks every candidate of the non-target pool by HFE and keeps the first
``k`` (ties: lower index first). It needs no model and no training: one DCT per
candidate. Scoring the triggered rather than the clean image lets the trigger's own
contribution (a patch's sharp edges, a blend pattern's fine structure) count.

The sort order is a free choice of this definition too: ``order="descending"`` (the
default, the most high-frequency energy first) or ``"ascending"`` (the smoothest triggered
images first, registered as ``hfe_asc``). Descending scored far below random selection
against a smooth blend in jaxpoison's IFS sweep, so both are measured.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.data.dct import dct2
from jaxpoison.data.pointcloud import is_point_cloud
from jaxpoison.selection.common import Selection, SelectionError, finish, poison_budget, triggered
from jaxpoison.training.evaluate import iterate_padded

ORDERS = ("descending", "ascending")


@dataclasses.dataclass(frozen=True)
class HFEConfig:
    """Settings of :func:`hfe_selection`.

    Attributes:
      order: ``"descending"`` (highest HFE first) or ``"ascending"`` (lowest first).
      radius: low-frequency radius in DCT index units (default ``min(H, W) / 4``).
      batch_size: images per DCT batch.
    """

    order: str = "descending"
    radius: float | None = None
    batch_size: int = 1024

    def __post_init__(self):
        _check_order(self.order)
        if self.batch_size < 1:
            raise SelectionError(f"batch_size must be ≥ 1; got {self.batch_size}.")


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise SelectionError(f"order must be one of {', '.join(ORDERS)}; got {order!r}.")


def hfe_ranking(scores, order: str = "descending") -> np.ndarray:
    """Positions of ``scores`` from first to last choice; ties go to the lower position in both orders.

    Without ties the ascending ranking is the descending one reversed.
    """
    _check_order(order)
    scores = np.asarray(scores, np.float64)
    return np.argsort(-scores if order == "descending" else scores, kind="stable")


def high_frequency_mask(height: int, width: int, radius: float | None = None) -> np.ndarray:
    """``bool [H, W]``: DCT coefficients with ``u² + v² > r²`` (default ``r = min(H, W) / 4``)."""
    radius = min(height, width) / 4 if radius is None else float(radius)
    if not (radius >= 0 and math.isfinite(radius)):
        raise SelectionError(f"radius must be a finite number ≥ 0; got {radius}.")
    u = np.arange(height)[:, None]
    v = np.arange(width)[None, :]
    return u**2 + v**2 > radius**2


@jax.jit
def _hfe_batch(images, mask):
    energy = jnp.sum(dct2(images) ** 2, axis=-1)  # summed over channels: [n, H, W]
    total = energy.sum(axis=(1, 2))
    high = jnp.sum(jnp.where(mask, energy, 0.0), axis=(1, 2))
    return jnp.where(total > 0, high / jnp.where(total > 0, total, 1.0), 0.0)


def hfe_scores(images, radius: float | None = None, batch_size: int = 1024) -> np.ndarray:
    """High-frequency energy share of each image ``[N, H, W, C]`` (or one ``[H, W, C]``): ``float64 [N]``.

    The images are scored as given; :func:`hfe_selection` passes the triggered images.
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise SelectionError(f"images must be [N, H, W, C] or [H, W, C]; got shape {images.shape}.")
    _, h, w, _ = images.shape
    mask = jnp.asarray(high_frequency_mask(h, w, radius))
    return _scores_in_batches(images, functools.partial(_hfe_batch, mask=mask), batch_size)


def _scores_in_batches(images: np.ndarray, fn, batch_size: int) -> np.ndarray:
    """``fn`` (one score per image) over fixed-size padded batches: one compilation."""
    n = images.shape[0]
    size = max(1, min(batch_size, n))
    out = [np.asarray(fn(images[idx]), np.float64)[valid] for idx, valid in iterate_padded(n, size)]
    return np.concatenate(out) if out else np.zeros(0)


def refuse_non_images(dataset: Dataset) -> None:
    """HFE scores images in the frequency domain; refuse point clouds (with the IFS paper's reason) and other data.

    Raises:
      SelectionError: the dataset does not hold images.
    """
    if is_point_cloud(dataset):
        raise SelectionError("HFE is not suitable for 3D point cloud tasks (the IFS paper's words): it screens "
                             "images by the energy of their 2-D DCT, and a point cloud has no pixel grid. Use rs, "
                             "fus, rd or ifs on point clouds.")  # fmt: skip
    if dataset.kind != "image":
        raise SelectionError(f"HFE scores images by their 2-D DCT; this dataset holds {dataset.kind}. Use rs, fus, "
                             "rd or ifs.")  # fmt: skip


def hfe_selection(
    dataset: Dataset,
    trigger,
    target: int,
    rate: float,
    config: HFEConfig | None = None,
    *,
    radius: float | None = None,
    batch_size: int | None = None,
    order: str | None = None,
) -> Selection:
    """The ``round(rate · N)`` pool candidates whose triggered image has the highest (or lowest) HFE.

    ``config`` (default ``HFEConfig()``) sets the order, radius and batch size; the keyword
    arguments, when given, override its fields. Deterministic (no seed): ties are broken by
    the lower index. ``scores`` are the chosen indices' HFE; ``info["candidates"]`` and
    ``info["candidate_scores"]`` hold the whole pool's, ``info["order"]`` the sort order. Point
    clouds and other non-image data are refused (:func:`refuse_non_images`).
    """
    refuse_non_images(dataset)
    config = HFEConfig() if config is None else config
    overrides = {"radius": radius, "batch_size": batch_size, "order": order}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    start = time.perf_counter()
    pool, k = poison_budget(dataset, target, rate)
    images = triggered(dataset, pool, trigger, target, config.batch_size).images
    scores = hfe_scores(images, config.radius, config.batch_size)
    chosen = hfe_ranking(scores, config.order)[:k]
    h, w = dataset.image_shape[:2]
    info = {
        "method": "hfe" if config.order == "descending" else "hfe_asc",
        "k": k,
        "pool": int(pool.size),
        "order": config.order,
        "radius": min(h, w) / 4 if config.radius is None else float(config.radius),
        "candidates": pool,
        "candidate_scores": scores,
        "seconds": time.perf_counter() - start,
    }
    return finish(pool[chosen], scores[chosen], info)
