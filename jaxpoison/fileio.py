"""Files that are either whole or absent: atomic writes and content digests, for every layer that stores artifacts.

Shared files are written once: in a multi-process run (``jax.distributed``) only process 0
writes, and the others read what it wrote after a barrier (see :mod:`jaxpoison.distributed`).
Orbax checkpoints coordinate their own writes and do not go through these functions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxpoison.distributed import is_writer


def _atomic_write(path: str | os.PathLike, write: Callable, mode: str) -> None:
    """On the writing process: ``write(file)`` to a temporary name, then rename it into place."""
    if not is_writer():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` so that a reader sees the old file or the new one, never half of either (process 0 only)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def save_array(path: str | os.PathLike, array) -> None:
    """``np.save`` ``array`` to ``path`` (a ``.npy`` file), atomically and on process 0 only."""
    _atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb")


def save_arrays(path: str | os.PathLike, *, compressed: bool = False, **arrays) -> None:
    """``np.savez`` (or ``savez_compressed``) ``arrays`` to ``path``, atomically and on process 0 only."""
    save = np.savez_compressed if compressed else np.savez
    _atomic_write(path, lambda f: save(f, **{k: np.asarray(v) for k, v in arrays.items()}), "wb")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
