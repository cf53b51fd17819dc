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

from jaxpoison.attacks import attack_metrics
from jaxpoison.detection.metrics import detection_metrics
from jaxpoison.experiments.config import RunConfig, UnlearnConfig, config_hash, to_dict
from jaxpoison.experiments.detectors import INFLUENCE_BASED, NEEDS_FACTORS, Detection, Victim, run_detector
from jaxpoison.experiments.report import write_report
from jaxpoison.experiments.store import RunStore
from jaxpoison.experiments.victim import (
    Poisoning,
    Splits,
    accuracy,
    clean_stage,
    init_model,
    load_data,
    pick_test_points,
    poison_stage,
    poison_success,
    recipe_of,
    victim_stage,
)
from jaxpoison.influence import NUMERICS_VERSION, FactorConfig, Factors, fit_factors, load_factors, save_factors
from jaxpoison.models import FunctionalModel
from jaxpoison.unlearning import (
    BadTeacherConfig,
    DistillConfig,
    ScrubConfig,
    Selector,
    SSDConfig,
    UnlearnResult,
    bad_teacher,
    continued_training,
    exact_unlearning,
    scrub,
    selective_synaptic_dampening,
)


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
        indices, images = pick_test_points(model, poisoning, config.attack.source, splits.test,
                                           config.detection.test_points)  # fmt: skip
        np.save(directory / "images.npy", images)
        return {"test_indices": indices.tolist(), "target": poisoning.target}

    point_key, point = store.run("test_point", {"victim": victim_key, "count": config.detection.test_points}, pick)
    images = np.load(store.path("test_point") / "images.npy")
    rate = poisoning.poison_indices.size / len(poisoning.dataset)  # the realised share, also under attack.count
    victim = Victim(model, poisoning.dataset, images, int(point["target"]), splits.train, rate)

    factors, factor_key = None, None
    if any(m in NEEDS_FACTORS for m in config.detection.methods):
        factor_config = FactorConfig(strategy="ekfac", fisher=config.detection.fisher,
                                     batch_size=config.detection.factor_batch_size, seed=config.seed)  # fmt: skip

        def fit(directory: Path) -> dict:
            fitted = fit_factors(model, poisoning.dataset, factor_config, checkpoint_dir=directory / "partial",
                                 progress=progress)  # fmt: skip
            save_factors(directory / "factors", fitted)
            return {"fisher": factor_config.fisher}

        factor_key, _ = store.run("factors", {"victim": victim_key, "factors": dataclasses.asdict(factor_config),
                                              "numerics": NUMERICS_VERSION}, fit)  # fmt: skip
        factors = load_factors(store.path("factors") / "factors", model)
    keys = {"clean": clean_key, "poison": poison_key, "victim": victim_key, "test_point": point_key,
            "factors": factor_key}  # fmt: skip
    return Prepared(config, store, splits, clean, poisoning, victim, victim_record, store.record("clean"), keys,
                    factors)  # fmt: skip


def detect_stage(prepared: Prepared, method: str, *, progress: bool = True) -> tuple[dict, Detection]:
    """Run (or reuse) detector ``method``; returns its metrics record and its flags/scores."""
    config = prepared.config
    # Which other detectors run does not change this one's result: leave the list out of its key.
    settings = {k: v for k, v in to_dict(config.detection).items() if k != "methods"}
    inputs = {"method": method, "detection": settings, "seed": config.seed,
              "victim": prepared.keys["test_point"],
              "factors": prepared.keys["factors"] if method in NEEDS_FACTORS else None,
              "numerics": NUMERICS_VERSION if method in INFLUENCE_BASED else None}  # fmt: skip
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


# --------------------------------------------------------------------------- unlearning


def make_selector(prepared: Prepared) -> Selector:
    """Score a candidate on the validation split: (poison success on triggered validation images, accuracy).

    Witches' Brew has no trigger to apply to validation images; its selector reports a
    poison success of 0 and so selects by validation accuracy alone.
    """
    validation = prepared.splits.validation
    if validation is None or len(validation) == 0:
        return None
    poisoning, source = prepared.poisoning, prepared.config.attack.source

    def selector(model: FunctionalModel) -> tuple[float, float]:
        if poisoning.trigger is None:
            return 0.0, accuracy(model, validation)
        metrics = attack_metrics(model.apply, model.params, model.state, validation, poisoning.trigger,
                                 poisoning.target, source)  # fmt: skip
        return metrics["asr"], metrics["clean_accuracy"]

    return selector


def run_unlearner(prepared: Prepared, method: str, flagged: np.ndarray, *, progress: bool = True) -> UnlearnResult:
    """Apply unlearning ``method`` to the victim given ``flagged`` training indices."""
    config, u = prepared.config, prepared.config.unlearning
    victim, data = prepared.victim.model, prepared.poisoning.dataset
    recipe = recipe_of(config.victim)
    selector = make_selector(prepared)
    distill = DistillConfig(steps=u.scrub_steps, learning_rate=u.scrub_lr)
    if method == "eu":
        return exact_unlearning(init_model(config.victim, data, config.seed), data, flagged, recipe,
                                seed=config.seed, progress=progress)  # fmt: skip
    if method in ("cf", "cf_short"):
        changes = {"optimizer": u.cf_optimizer, "learning_rate": u.cf_learning_rate,
                   "weight_decay": u.cf_weight_decay, "epochs": u.cf_epochs}  # fmt: skip
        cf_recipe = recipe.replace(**{k: v for k, v in changes.items() if v is not None})
        cf_recipe = cf_recipe.replace(nesterov=cf_recipe.optimizer == "sgd")
        if method == "cf_short":
            cf_recipe = cf_recipe.replace(epochs=u.cf_short_epochs, milestones=())
        fresh = init_model(config.victim, data, config.seed + 1) if u.cf_reset_head else None
        return continued_training(victim, data, flagged, cf_recipe, fresh_head=fresh, seed=config.seed,
                                  progress=progress)  # fmt: skip
    if method == "ssd":
        return selective_synaptic_dampening(victim, data, flagged, SSDConfig(u.ssd_alphas, u.ssd_lambda_factors),
                                            selector=selector)  # fmt: skip
    if method == "scrub":
        scrub_config = ScrubConfig(distill, u.scrub_max_steps, u.scrub_alpha, u.scrub_temperature)
        return scrub(victim, data, flagged, scrub_config, selector=selector)
    if method == "badt":
        teacher = init_model(config.victim, data, config.seed + 1)
        badt_config = BadTeacherConfig(DistillConfig(steps=u.badt_steps, learning_rate=u.badt_lr))
        return bad_teacher(victim, teacher, data, flagged, badt_config, selector=selector)
    raise ValueError(f"unknown unlearning method {method!r}.")


# The UnlearnConfig fields each unlearner reads (EU reads none: it retrains with the victim's recipe).
_SETTINGS_PREFIX = {"eu": None, "cf": "cf_", "cf_short": "cf_", "ssd": "ssd_", "scrub": "scrub_", "badt": "badt_"}


def unlearner_settings(unlearning: UnlearnConfig, method: str) -> dict:
    """The part of ``unlearning`` that ``method``'s result depends on — its stage key.

    Leaving out the method list and the other methods' settings means that changing, say,
    CF's learning rate reruns CF only, not a finished exact-unlearning retrain.
    """
    if method not in _SETTINGS_PREFIX:
        raise ValueError(f"unknown unlearning method {method!r}; choose from {sorted(_SETTINGS_PREFIX)}.")
    prefix = _SETTINGS_PREFIX[method]
    return {k: v for k, v in to_dict(unlearning).items() if prefix and k.startswith(prefix)}


def unlearn_stage(
    prepared: Prepared, detector: str, method: str, flagged: np.ndarray, *, progress: bool = True
) -> dict:
    """Run (or reuse) unlearning ``method`` on ``detector``'s flags and evaluate PSR and clean accuracy."""
    flagged = np.asarray(flagged, np.int64)
    settings = unlearner_settings(prepared.config.unlearning, method)
    inputs = {"detector": detector, "method": method, "unlearning": settings,
              "victim": prepared.keys["test_point"], "flagged": config_hash(flagged.tolist())}  # fmt: skip

    def compute(directory: Path) -> dict:
        start = time.perf_counter()
        result = run_unlearner(prepared, method, flagged, progress=progress)
        seconds = time.perf_counter() - start
        metrics = poison_success(result.model, prepared.poisoning, prepared.config, prepared.splits.test)
        info = {k: v for k, v in result.info.items() if k != "losses"}
        return {"detector": detector, "unlearner": method, **metrics, "seconds": seconds, "info": info}

    _, record = prepared.store.run(f"unlearn:{detector}:{method}", inputs, compute)
    return record


# --------------------------------------------------------------------------- the whole run


def run_pipeline(config: RunConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Poison → train → detect → unlearn → evaluate; writes ``report.json``, ``report.md`` and plots in ``out``."""
    start = time.perf_counter()
    prepared = prepare(config, out, force=force, progress=progress)
    detections, detection_records = {}, {}
    for method in config.detection.methods:
        record, detection = detect_stage(prepared, method, progress=progress)
        detections[method], detection_records[method] = detection, record
    unlearn_records = []
    detectors = config.unlearning.detectors or config.detection.methods
    for detector in detectors:
        for method in config.unlearning.methods:
            unlearn_records.append(unlearn_stage(prepared, detector, method, detections[detector].flagged,
                                                 progress=progress))  # fmt: skip
    report = write_report(prepared, detection_records, detections, unlearn_records, time.perf_counter() - start)
    return report
