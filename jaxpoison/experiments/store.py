"""A run directory of stage artifacts, each keyed by a hash of everything it depends on.

``DIR/run.json`` names the run's configuration. Each stage writes into
``DIR/stages/NAME/`` and, only once everything is written, ``stage.json`` with its
key and record. A later run reuses a stage whose ``stage.json`` carries the same key
and recomputes one whose key changed or that never finished (an interrupted stage
leaves no ``stage.json``), so re-running a finished run is free and an interrupted
one resumes at the first unfinished stage. A directory holding another configuration is
refused unless ``force``; even then, stages whose inputs did not change are reused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from jaxpoison.errors import InputError
from jaxpoison.experiments.config import config_hash


class RunDirectoryError(InputError):
    """The output directory holds something this run must not overwrite."""


class RunStore:
    """Stage bookkeeping for one run directory.

    Attributes:
      root: the run directory.
      events: ``(stage, "computed" | "reused")`` in order, for reports and tests.
    """

    def __init__(self, root: str | Path, config: dict, *, force: bool = False):
        self.root = Path(root)
        self.events: list[tuple[str, str]] = []
        run_file = self.root / "run.json"
        key = config_hash(config)
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            if previous.get("config_hash") != key and not force:
                raise RunDirectoryError(
                    f"{self.root} holds another run (config hash {previous.get('config_hash')}, this one {key}); "
                    "choose another --out directory or pass --force to replace its artifacts."
                )
        elif self.root.exists() and any(self.root.iterdir()) and not force:
            raise RunDirectoryError(
                f"{self.root} is not empty and is not a jaxpoison run directory; choose an empty or new --out "
                "directory, or pass --force."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"config_hash": key, "config": config}, indent=2))

    def path(self, name: str) -> Path:
        return self.root / "stages" / name.replace(":", "__")

    def record(self, name: str) -> dict | None:
        """The finished stage's record, or ``None``."""
        marker = self.path(name) / "stage.json"
        return json.loads(marker.read_text())["record"] if marker.exists() else None

    def run(self, name: str, key_inputs: dict, compute: Callable[[Path], dict]) -> tuple[str, dict]:
        """Run (or reuse) stage ``name``; ``compute(directory) -> record`` writes its artifacts.

        Returns:
          ``(key, record)``; pass ``key`` into the inputs of downstream stages.
        """
        key = config_hash(key_inputs)
        directory = self.path(name)
        marker = directory / "stage.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("key") == key:
                self.events.append((name, "reused"))
                return key, saved["record"]
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        start = time.perf_counter()
        record = compute(directory)
        seconds = time.perf_counter() - start
        record = {**record, "stage_seconds": seconds}
        tmp = directory / "stage.json.tmp"
        tmp.write_text(json.dumps({"key": key, "inputs": key_inputs, "record": record}, indent=2, default=str))
        tmp.replace(marker)  # the stage counts as finished only once this lands
        self.events.append((name, "computed"))
        return key, json.loads(marker.read_text())["record"]  # as a later run will read it
