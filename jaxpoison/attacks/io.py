"""Save and load triggers: one ``.npz`` of arrays (no pickle) plus a JSON manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxpoison.attacks.pointcloud import PointClusterTrigger
from jaxpoison.attacks.smooth import SmoothTrigger
from jaxpoison.attacks.triggers import BlendedTrigger, PatchedTrigger, PatchTrigger, Trigger, TriggerError
from jaxpoison.fileio import atomic_write_text, save_arrays


def save_trigger(directory: str | os.PathLike, trigger: Trigger) -> None:
    """Write ``trigger.npz`` and ``trigger.json`` (its :meth:`describe` record) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"pattern": np.asarray(trigger.pattern)} if hasattr(trigger, "pattern") else {}
    if isinstance(trigger, PatchTrigger | PatchedTrigger):
        arrays["mask"] = np.asarray(trigger.mask)
    elif isinstance(trigger, PointClusterTrigger):
        arrays = {"anchor": np.asarray(trigger.anchor), "offsets": np.asarray(trigger.offsets)}
    elif not isinstance(trigger, BlendedTrigger | SmoothTrigger):
        raise TriggerError(f"cannot save a {type(trigger).__name__}; save_trigger knows patch, patched, blended, "
                           "smooth and point-cluster triggers.")  # fmt: skip
    save_arrays(directory / "trigger.npz", **arrays)
    atomic_write_text(directory / "trigger.json", json.dumps(trigger.describe(), indent=2, default=float))


def load_trigger(directory: str | os.PathLike) -> Trigger:
    """Read a trigger written by :func:`save_trigger`."""
    directory = Path(directory)
    if not (directory / "trigger.json").is_file() or not (directory / "trigger.npz").is_file():
        raise FileNotFoundError(f"no trigger in {directory} (trigger.json / trigger.npz missing).")
    info = json.loads((directory / "trigger.json").read_text())
    with np.load(directory / "trigger.npz", allow_pickle=False) as arrays:
        stored = {key: arrays[key] for key in arrays.files}
    pattern, mask = stored.get("pattern"), stored.get("mask")
    kind = info.get("type")
    if kind == "point-cluster":
        return PointClusterTrigger(stored["anchor"], stored["offsets"], float(info["epsilon"]),
                                   name=info.get("name", "point-cluster"), on_surface=bool(info["on_surface"]))
    if kind == "patched":
        return PatchedTrigger(mask, pattern, float(info["epsilon"]), name=info.get("name", "patched"))
    if kind == "patch":
        return PatchTrigger(mask, pattern, name=info.get("name", "patch"))
    if kind == "blended":
        return BlendedTrigger(pattern, float(info["epsilon"]), name=info.get("name", "blended"))
    if kind == "smooth":
        meta = {k: v for k, v in info.items() if k not in ("type", "name")}
        return SmoothTrigger(pattern, name=info.get("name", "smooth"), meta=meta)
    raise TriggerError(f"{directory / 'trigger.json'} names an unknown trigger type {kind!r}.")
