"""``jaxpoison run``: poison → train victim → pick a poisoned test point → detect → unlearn → evaluate.

Each step is a stage of a :class:`RunStore`; re-running skips finished stages and an
interrupted run resumes. :func:`prepare` runs the attack half and fits the factors;
:func:`detect_stage` runs one detector; :func:`run_pipeline` runs everything and writes
the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxpoison.detection.metrics import detection_metrics
from jaxpoison.experiments.config import RunConfig, to_dict
from jaxpoison.experiments.detectors import NEEDS_FACTORS, Detection, Victim, run_detector
from jaxpoison.experiments.store import RunStore
from jaxpoison.experiments.victim import (
    Poisoning,
    Splits,
    clean_stage,
    load_data,
    pick_test_point,
    poison_stage,
    victim_stage,
)
from jaxpoison.influence import FactorConfig, Factors, fit_factors, load_factors, save_factors
from jaxpoison.models import FunctionalModel


class Prepared(NamedTuple):
    """Everything the defence half needs, plus the keys downstream stages depend on."""

    config: RunConfig
    store: RunStore
    splits: Splits
    clean: FunctionalModel
    poisoning: Poisoning
    victim: Victim
    victim_record: dict
    clean_record: dict
    keys: dict
    factors: Factors | None


def prepare(config: RunConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> Prepared:
    """Run (or reuse) the data, clean-model, poison, victim, test-point and factor stages."""
    store = RunStore(out, to_dict(config), force=force)
    splits = load_data(config.data, config.seed)
    clean_key, clean = clean_stage(store, config, splits, progress)
    poison_key, poisoning = poison_stage(store, config, splits, clean, clean_key, progress)
    victim_key, model, victim_record = victim_stage(store, config, splits, poisoning, poison_key, progress)

    def pick(directory: Path) -> dict:
        index, image = pick_test_point(model, poisoning, config.attack.source, splits.test)
        np.save(directory / "image.npy", image)
        return {"test_index": index, "target": poisoning.target}

    point_key, point = store.run("test_point", {"victim": victim_key}, pick)
    image = np.load(store.path("test_point") / "image.npy")
    victim = Victim(model, poisoning.dataset, image, int(point["target"]), splits.train, config.attack.rate)

    factors, factor_key = None, None
    if any(m in NEEDS_FACTORS for m in config.detection.methods):
        factor_config = FactorConfig(strategy="ekfac", fisher=config.detection.fisher,
                                     batch_size=config.detection.factor_batch_size, seed=config.seed)  # fmt: skip

        def fit(directory: Path) -> dict:
            fitted = fit_factors(model, poisoning.dataset, factor_config, checkpoint_dir=directory / "partial",
                                 progress=progress)  # fmt: skip
            save_factors(directory / "factors", fitted)
            return {"fisher": factor_config.fisher}

        factor_key, _ = store.run("factors", {"victim": victim_key, "factors": dataclasses.asdict(factor_config)}, fit)
        factors = load_factors(store.path("factors") / "factors", model)
    keys = {"clean": clean_key, "poison": poison_key, "victim": victim_key, "test_point": point_key,
            "factors": factor_key}  # fmt: skip
    return Prepared(config, store, splits, clean, poisoning, victim, victim_record, store.record("clean"), keys,
                    factors)  # fmt: skip


def detect_stage(prepared: Prepared, method: str, *, progress: bool = True) -> tuple[dict, Detection]:
    """Run (or reuse) detector ``method``; returns its metrics record and its flags/scores."""
    config = prepared.config
    inputs = {"method": method, "detection": to_dict(config.detection), "seed": config.seed,
              "victim": prepared.keys["test_point"],
              "factors": prepared.keys["factors"] if method in NEEDS_FACTORS else None}  # fmt: skip
    n = len(prepared.poisoning.dataset)

    def compute(directory: Path) -> dict:
        found = run_detector(method, prepared.victim, prepared.factors, config.detection, seed=config.seed,
                             progress=progress)  # fmt: skip
        np.save(directory / "flagged.npy", found.flagged)
        np.save(directory / "scores.npy", found.scores)
        arrays = {k: v for k, v in found.extra.items() if isinstance(v, np.ndarray)}
        if arrays:
            np.savez_compressed(directory / "extra.npz", **arrays)
        info = {k: v for k, v in found.extra.items() if not isinstance(v, np.ndarray)}
        metrics = detection_metrics(found.flagged, prepared.poisoning.poison_indices, n, found.scores, found.seconds)
        (directory / "detection.json").write_text(json.dumps({"method": method, **metrics, "info": info},
                                                             indent=2, default=float))  # fmt: skip
        return {"method": method, **metrics, "info": info}

    _, record = prepared.store.run(f"detect:{method}", inputs, compute)
    directory = prepared.store.path(f"detect:{method}")
    extra = {}
    if (directory / "extra.npz").exists():
        with np.load(directory / "extra.npz", allow_pickle=False) as saved:
            extra = {k: saved[k] for k in saved.files}
    extra.update(record.get("info", {}))
    detection = Detection(np.load(directory / "flagged.npy"), np.load(directory / "scores.npy"),
                          record["seconds"], extra)  # fmt: skip
    return record, detection


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start
