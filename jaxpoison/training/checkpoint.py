"""Orbax checkpoints of training state, with resume.

A checkpoint directory holds one numbered step per saved epoch, each with the
array pytree (``params``, ``state``, ``opt_state``) and a JSON record (epoch,
history, recipe). :func:`restore_latest` rebuilds the pytree structure from an
abstract template, so optax states come back as the same NamedTuples.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxpoison.errors import ArtifactError


class CheckpointError(ArtifactError):
    """A checkpoint cannot be written or read back."""


def checkpoint_manager(directory: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """An Orbax manager keeping the newest ``max_to_keep`` steps under ``directory``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, tree: Any, meta: dict) -> None:
    """Save ``tree`` (arrays) and ``meta`` (JSON-serialisable) as ``step``; blocks until written."""
    manager.save(step, args=ocp.args.Composite(tree=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, template: Any) -> tuple[int, Any, dict] | None:
    """The newest ``(step, tree, meta)``, with ``tree`` shaped like ``template``; ``None`` if empty."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(tree=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(
            f"checkpoint step {step} in {manager.directory} does not match this model/optimiser ({e}). "
            "Use a fresh output directory or delete the old checkpoints."
        ) from e
    return step, restored["tree"], dict(restored["meta"])
