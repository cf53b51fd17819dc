"""Save and load triggers: one ``.npz`` of arrays (no pickle) plus a JSON manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxpoison.attacks.smooth import SmoothTrigger
from jaxpoison.attacks.triggers import BlendedTrigger, PatchTrigger, Trigger, TriggerError


def save_trigger(directory: str | os.PathLike, trigger: Trigger) -> None:
    """Write ``trigger.npz`` and ``trigger.json`` (its :meth:`describe` record) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"pattern": np.asarray(trigger.pattern)}
    if isinstance(trigger, PatchTrigger):
        arrays["mask"] = np.asarray(trigger.mask)
    elif not isinstance(trigger, BlendedTrigger | SmoothTrigger):
        raise TriggerError(f"cannot save a {type(trigger).__name__}; save_trigger knows patch, blended and smooth.")
    np.savez(directory / "trigger.npz", **arrays)
    (directory / "trigger.json").write_text(json.dumps(trigger.describe(), indent=2, default=float))


def load_trigger(directory: str | os.PathLike) -> Trigger:
    """Read a trigger written by :func:`save_trigger`."""
    directory = Path(directory)
    if not (directory / "trigger.json").is_file() or not (directory / "trigger.npz").is_file():
        raise FileNotFoundError(f"no trigger in {directory} (trigger.json / trigger.npz missing).")
    info = json.loads((directory / "trigger.json").read_text())
    with np.load(directory / "trigger.npz", allow_pickle=False) as arrays:
        pattern = arrays["pattern"]
        mask = arrays["mask"] if "mask" in arrays.files else None
    kind = info.get("type")
    if kind == "patch":
        return PatchTrigger(mask, pattern, name=info.get("name", "patch"))
    if kind == "blended":
        return BlendedTrigger(pattern, float(info["epsilon"]), name=info.get("name", "blended"))
    if kind == "smooth":
        meta = {k: v for k, v in info.items() if k not in ("type", "name")}
        return SmoothTrigger(pattern, name=info.get("name", "smooth"), meta=meta)
    raise TriggerError(f"{directory / 'trigger.json'} names an unknown trigger type {kind!r}.")
