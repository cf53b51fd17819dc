"""A run directory of stage artifacts, each keyed by a hash of everything it depends on.

``DIR/run.json`` names the run's configuration. Each stage writes into
``DIR/stages/NAME/`` and, only once everything is written, ``stage.json`` with its
key, its record and a SHA-256 of every file it wrote. A later run reuses a stage whose
``stage.json`` carries the same key *and* whose files still match their hashes; a stage
whose key changed, that never finished (an interrupted stage leaves no ``stage.json``)
or whose files were damaged is recomputed, with a note naming the file. Re-running a
finished run is therefore free, an interrupted one resumes at the first unfinished
stage, and nothing downstream ever reads an artifact its record does not describe.

A directory holding another *finished* run (one with a report) is refused unless ``force``;
one whose run stopped before its report is taken over by the next command, so a corrected
command can reuse its ``--out``. Either way, only stages whose inputs did not change are
reused. One process at a time may use a run directory: a second one is refused while the
first holds the lock.

A multi-process run (``jax.distributed``) shares one run directory, on a file system every
process sees: all processes compute each stage together, process 0 alone locks the
directory and writes files, and barriers at every stage's entry and end keep the processes
in step, so they reuse or recompute exactly the same stages.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from jaxpoison.distributed import barrier, is_writer
from jaxpoison.errors import InputError, warn_recovery
from jaxpoison.experiments.config import config_hash
from jaxpoison.fileio import atomic_write_text, file_digest

STAGE_FILE = "stage.json"
LOCK_FILE = ".lock"
FINISHED_FILE = "report.json"  # a run directory with a report holds a finished run, which is never taken over


class RunDirectoryError(InputError):
    """The output directory holds something this run must not overwrite, or another process is using it."""


def _stage_files(directory: Path, keep: Iterable[str]) -> dict[str, str]:
    """``relative path -> SHA-256`` of every artifact in a stage (the marker and kept scratch excluded)."""
    skip = {STAGE_FILE, *keep}
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and relative.parts[0] not in skip:
            files[relative.as_posix()] = file_digest(path)
    return files


def damage(directory: Path, files: dict[str, str]) -> str | None:
    """Why a finished stage's artifacts cannot be trusted (a missing, changed or unreadable file), or ``None``."""
    for name, digest in files.items():
        path = directory / name
        try:
            if file_digest(path) != digest:
                return f"file {name} changed since the stage finished"
        except FileNotFoundError:
            return f"file {name} is missing"
        except OSError as e:
            return f"file {name} cannot be read ({e.strerror or e})"
    return None


# Process-wide: which run directories this process has locked, and how many stores use each.
_LOCKS: dict[Path, list] = {}


def _acquire(root: Path) -> None:
    """Lock ``root`` for this process (re-entrant within it), or refuse if another process holds it."""
    key = root.resolve()
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        return
    handle = open(root / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirectoryError(
            f"{root} is in use by another jaxpoison process (pid {holder}); wait for it to finish or choose "
            "another --out directory."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _LOCKS[key] = [handle, 1]


def _release(root: Path) -> None:
    key = root.resolve()
    entry = _LOCKS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        entry[0].close()
        del _LOCKS[key]


class RunStore:
    """Stage bookkeeping for one run directory.

    Use it as a context manager (or call :meth:`close`) to release the directory's lock.

    Attributes:
      root: the run directory.
      events: ``(stage, "computed" | "reused" | "damaged")`` in order, for reports and tests.
    """

    def __init__(self, root: str | os.PathLike, config: dict, *, force: bool = False):
        self.root = Path(root)
        self.events: list[tuple[str, str]] = []
        self._open = False
        if self.root.exists() and not self.root.is_dir():
            raise RunDirectoryError(f"--out {self.root} is a file, not a directory; choose a directory path.")
        run_file = self.root / "run.json"
        key = config_hash(config)
        if run_file.exists():
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, ValueError) as e:
                previous = {}
                if not force:
                    raise RunDirectoryError(
                        f"{run_file} is damaged ({e}); pass --force to reuse the directory (its stages are still "
                        "verified one by one) or choose another --out."
                    ) from None
            finished = (self.root / FINISHED_FILE).exists()
            if previous.get("config_hash") != key and not force and not finished and previous:
                # A run that stopped (an error, a kill) before its report: the corrected command may take
                # the directory over; its stages are keyed, so only those whose inputs match are reused.
                warn_recovery(f"{self.root} holds an unfinished run of another configuration; taking it over and "
                              "reusing the stages whose inputs match.")  # fmt: skip
            elif previous.get("config_hash") != key and not force:
                raise RunDirectoryError(
                    f"{self.root} holds another run (config hash {previous.get('config_hash')}, this one {key}); "
                    "choose another --out directory or pass --force to replace its artifacts."
                )
        elif self.root.exists() and any(p.name != LOCK_FILE for p in self.root.iterdir()) and not force:
            raise RunDirectoryError(
                f"{self.root} is not empty and is not a jaxpoison run directory; choose an empty or new --out "
                "directory, or pass --force."
            )
        barrier(f"run directory checked: {self.root}")  # every process judged it before process 0 writes
        if is_writer():  # one process locks and writes; the others follow its lead at the barriers
            self.root.mkdir(parents=True, exist_ok=True)
            _acquire(self.root)
        self._open = True
        atomic_write_text(run_file, json.dumps({"config_hash": key, "config": config}, indent=2))
        barrier(f"run directory ready: {self.root}")

    def close(self) -> None:
        """Release the run directory's lock (idempotent)."""
        if self._open:
            self._open = False
            if is_writer():
                _release(self.root)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the OS drops the lock with the process anyway
            pass

    def path(self, name: str) -> Path:
        return self.root / "stages" / name.replace(":", "__")

    def _finished(self, name: str) -> dict | None:
        """The stage's marker if it finished and every artifact still matches its hash; else ``None`` (with a note)."""
        directory = self.path(name)
        marker = directory / STAGE_FILE
        if not marker.exists():
            return None
        try:
            saved = json.loads(marker.read_text())
            files = saved.get("files") if isinstance(saved, dict) else None
        except (OSError, ValueError) as e:
            problem = f"file {STAGE_FILE} is unreadable ({type(e).__name__})"
        else:
            problem = "it predates artifact checksums" if not isinstance(files, dict) else None
        if problem is None:
            problem = damage(directory, files)
            if problem is None:
                return saved
        warn_recovery(f"stage {name} is damaged ({problem}): recomputing it.")
        self.events.append((name, "damaged"))
        return None

    def record(self, name: str) -> dict | None:
        """The finished, intact stage's record, or ``None``."""
        saved = self._finished(name)
        return None if saved is None else saved["record"]

    def run(
        self, name: str, key_inputs: dict, compute: Callable[[Path], dict], *, keep: Iterable[str] = ()
    ) -> tuple[str, dict]:
        """Run (or reuse) stage ``name``; ``compute(directory) -> record`` writes its artifacts.

        Args:
          keep: entries of the stage directory that survive a recomputation (e.g. partial sums
            that carry their own hashes and resume an interrupted pass); they are not artifacts
            of the finished stage and are not hashed.

        Returns:
          ``(key, record)``; pass ``key`` into the inputs of downstream stages.
        """
        if not self._open:
            raise RunDirectoryError(f"the run store for {self.root} was closed; open a new one.")
        keep = tuple(keep)
        key = config_hash(key_inputs)
        directory = self.path(name)
        barrier(f"stage {name} entered")  # every process sees the same markers, so all reuse or all compute
        saved = self._finished(name)
        if saved is not None and saved.get("key") == key:
            self.events.append((name, "reused"))
            return key, saved["record"]
        barrier(f"stage {name} checked")
        if directory.exists() and is_writer():
            for entry in directory.iterdir():
                if entry.name in keep:
                    continue
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        directory.mkdir(parents=True, exist_ok=True)
        barrier(f"stage {name} cleared")
        start = time.perf_counter()
        record = compute(directory)  # every process computes; process 0 writes the files
        seconds = time.perf_counter() - start
        record = {**record, "stage_seconds": seconds}
        barrier(f"stage {name} written")  # orbax and plain files alike are complete before they are hashed
        files = _stage_files(directory, keep) if is_writer() else {}
        blob = json.dumps({"key": key, "inputs": key_inputs, "record": record, "files": files}, indent=2, default=str)
        atomic_write_text(directory / STAGE_FILE, blob)  # the stage counts as finished only once this lands
        barrier(f"stage {name} finished")
        self.events.append((name, "computed"))
        return key, json.loads(blob)["record"]  # as a later run will read it
