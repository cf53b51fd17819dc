"""Orbax checkpoints of training state, with resume.

A checkpoint directory holds one numbered step per saved epoch, each with the
array pytree (``params``, ``state``, ``opt_state``) and a JSON record (epoch,
history, recipe). :func:`restore_latest` rebuilds the pytree structure from an
abstract template, so optax states come back as the same NamedTuples.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxpoison.errors import ArtifactError, warn_recovery


class CheckpointError(ArtifactError):
    """A checkpoint cannot be written or read back."""


def checkpoint_manager(directory: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """An Orbax manager keeping the newest ``max_to_keep`` steps under ``directory``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, tree: Any, meta: dict) -> None:
    """Save ``tree`` (arrays) and ``meta`` (JSON-serialisable) as ``step``; blocks until written.

    The record also carries ``tree``'s signature, so that a restore can tell a damaged step
    from one saved by another model.
    """
    meta = {**meta, "tree_signature": tree_signature(tree)}
    manager.save(step, args=ocp.args.Composite(tree=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def tree_signature(tree: Any) -> list[str]:
    """Path, shape and dtype of every leaf: what a checkpoint of ``tree`` must hold to be restored into it."""
    return [f"{jax.tree_util.keystr(path)}:{tuple(jnp.shape(leaf))}:{jnp.result_type(leaf)}"
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]  # fmt: skip


def restore_latest(
    manager: ocp.CheckpointManager, template: Any, *, accept: Callable[[dict], None] | None = None
) -> tuple[int, Any, dict] | None:
    """The newest readable ``(step, tree, meta)``, with ``tree`` shaped like ``template``; ``None`` if none.

    Each step's JSON record is read first and handed to ``accept``, which raises (e.g. a
    :class:`CheckpointError` for another run's checkpoints) before any array is read. A step
    whose record or arrays cannot be read back — truncated, emptied, half-copied — is damaged:
    it is reported, deleted, and the next older step is tried, so training redoes only what
    was lost. A step that reads back but does not fit ``template`` is *not* damage: if its
    record says it was saved from a tree of this signature the arrays are damaged; otherwise
    it belongs to another model and :class:`CheckpointError` is raised, leaving it untouched.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    signature = tree_signature(template)
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception as e:  # whatever makes a record unreadable, the step is damaged
            _drop_damaged(manager, step, e)
            continue
        if accept is not None:
            accept(meta)
        saved_signature = meta.pop("tree_signature", None)
        if saved_signature is not None and saved_signature != signature:
            raise CheckpointError(
                f"checkpoint step {step} in {manager.directory} holds another model's arrays "
                f"({len(saved_signature)} leaves, this model {len(signature)}). Use a fresh output directory or "
                "delete the old checkpoints."
            )
        try:
            restored = manager.restore(step, args=ocp.args.Composite(tree=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # likewise for its arrays
            if saved_signature is None:  # an older record without a signature: cannot tell damage from mismatch
                raise CheckpointError(
                    f"checkpoint step {step} in {manager.directory} cannot be restored into this model/optimiser "
                    f"({_first_line(e)}). Use a fresh output directory or delete the old checkpoints."
                ) from None
            _drop_damaged(manager, step, e)
            continue
        return step, restored["tree"], meta
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:160]}"


def _drop_damaged(manager: ocp.CheckpointManager, step: int, error: Exception) -> None:
    warn_recovery(f"checkpoint step {step} in {manager.directory} is damaged ({_first_line(error)}): deleting it "
                  "and resuming from the step before.")  # fmt: skip
    manager.delete(step)


def save_tree(path: str | os.PathLike, tree: Any) -> None:
    """Write an array pytree to ``path`` with Orbax, replacing what is there; blocks until written.

    The one writer of single-tree artifacts (models, factors, scores): callers record what the
    tree is for — and its hashes — beside it, in their own JSON written last.
    """
    with ocp.StandardCheckpointer() as saver:
        saver.save(os.path.abspath(path), tree, force=True)


def load_tree(path: str | os.PathLike, template: Any = None, *, what: str = "arrays") -> Any:
    """Read a pytree written by :func:`save_tree`, shaped like ``template`` when one is given.

    Raises:
      CheckpointError: the directory is missing, damaged or incomplete — one line naming it,
        instead of the storage layer's own (very long) error.
    """
    abstract = None if template is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        with ocp.StandardCheckpointer() as loader:
            return loader.restore(os.path.abspath(path)) if abstract is None else loader.restore(
                os.path.abspath(path), abstract)  # fmt: skip
    except Exception as e:  # Orbax and TensorStore raise many types; all mean the same unreadable directory
        raise CheckpointError(f"the {what} in {path} cannot be read ({_first_line(e)}); the directory is damaged or "
                              "incomplete: delete it and compute it again.") from e  # fmt: skip
