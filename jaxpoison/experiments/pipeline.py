"""``jaxpoison run``: poison → train victim → pick a poisoned test point → detect → unlearn → evaluate.

Each step is a stage of a :class:`RunStore`; re-running skips finished stages and an
interrupted run resumes. :func:`prepare` runs the attack half and fits the factors;
:func:`detect_stage` runs one detector; :func:`run_pipeline` runs everything and writes
the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxpoison.attacks import all_to_all_metrics, attack_metrics
from jaxpoison.detection.metrics import detection_metrics
from jaxpoison.distributed import is_writer
from jaxpoison.errors import InputError
from jaxpoison.experiments.config import RunConfig, UnlearnConfig, config_hash, to_dict
from jaxpoison.experiments.detectors import Detection, Victim, merge_detections, run_detector
from jaxpoison.experiments.registry import DETECTOR_LABELS, INFLUENCE_BASED, NEEDS_FACTORS, UNLEARNER_SPECS
from jaxpoison.experiments.report import write_report
from jaxpoison.experiments.store import RunStore
from jaxpoison.experiments.victim import (
    Poisoning,
    Splits,
    accuracy,
    clean_stage,
    init_model,
    load_data,
    pick_points_per_target,
    pick_test_points,
    poison_stage,
    poison_success,
    test_point_target,
    validate_against_data,
    victim_stage,
)
from jaxpoison.fileio import atomic_write_text, save_array, save_arrays
from jaxpoison.influence import NUMERICS_VERSION, Factors, fit_factors, load_factors, save_factors
from jaxpoison.models import FunctionalModel
from jaxpoison.progress import stage as named_stage
from jaxpoison.progress import stages as numbered_stages
from jaxpoison.training.evaluate import NonFiniteOutputError
from jaxpoison.unlearning import (
    DistillConfig,
    Selector,
    UnlearningDiverged,
    UnlearnResult,
    bad_teacher,
    clean_rule,
    continued_training,
    exact_unlearning,
    oracle_rule,
    scrub,
    selective_synaptic_dampening,
    split_forget_retain,
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


PARTIAL = "partial"  # factor partial sums inside the factors stage: kept when an interrupted fit reruns


def prepare(config: RunConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> Prepared:
    """Run (or reuse) the data, clean-model, poison, victim, test-point and factor stages.

    Everything that can be checked before work starts is checked before the run directory is
    claimed: the configuration (on construction), the dataset, and the attack's classes
    against it. Close ``Prepared.store`` (or let :func:`run_pipeline` do it) to release the
    directory's lock.
    """
    splits = load_data(config.data, config.seed)
    validate_against_data(config, splits)
    store = RunStore(out, to_dict(config), force=force)
    try:
        return _prepare_stages(config, store, splits, progress)
    except BaseException:
        store.close()
        raise


def _prepare_stages(config: RunConfig, store: RunStore, splits: Splits, progress: bool) -> Prepared:
    with named_stage("clean model"):
        clean_key, clean = clean_stage(store, config, splits, progress)
    with named_stage("poison"):
        poison_key, poisoning = poison_stage(store, config, splits, clean, clean_key, progress)
    with named_stage("victim"):
        victim_key, model, victim_record = victim_stage(store, config, splits, poisoning, poison_key, progress)

    def pick(directory: Path) -> dict:
        indices, images = pick_test_points(model, poisoning, config.attack.source, splits.test,
                                           config.detection.test_points)  # fmt: skip
        save_array(directory / "images.npy", images)
        # the class the points were sent to (all-to-all: the first point's (y + 1) mod C)
        return {"test_indices": indices.tolist(), "target": test_point_target(poisoning, splits.test, indices)}

    with named_stage("test point"):
        point_key, point = store.run("test_point", {"victim": victim_key, "count": config.detection.test_points},
                                     pick)  # fmt: skip
    images = np.load(store.path("test_point") / "images.npy")
    rate = poisoning.poison_indices.size / len(poisoning.dataset)  # the realised share, also under attack.count
    victim = Victim(model, poisoning.dataset, images, int(point["target"]), splits.train, rate, poisoning.all_to_all)

    factors, factor_key = None, None
    if any(m in NEEDS_FACTORS for m in config.detection.methods):
        factor_config = dataclasses.replace(config.detection.factors, seed=config.seed)

        def fit(directory: Path) -> dict:
            # Partial sums carry their own parameter/data/config hashes, so an interrupted fit
            # resumes from them and sums for anything else are discarded by fit_factors itself.
            fitted = fit_factors(model, poisoning.dataset, factor_config, checkpoint_dir=directory / PARTIAL,
                                 progress=progress)  # fmt: skip
            save_factors(directory / "factors", fitted)
            if is_writer():
                shutil.rmtree(directory / PARTIAL, ignore_errors=True)  # the finished factors supersede them
            return {"fisher": factor_config.fisher, "resumed": fitted.meta.get("resumed_from")}

        with named_stage("EK-FAC factors"):
            factor_key, _ = store.run("factors", {"victim": victim_key, "factors": dataclasses.asdict(factor_config),
                                                  "numerics": NUMERICS_VERSION}, fit, keep=(PARTIAL,))  # fmt: skip
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
    # All-to-all: the detectors that start from identified test points run once per target class,
    # and spectral signatures assume a per-class poison share of the rate (see class_poison_share).
    per_target = prepared.poisoning.all_to_all and method in INFLUENCE_BASED
    if prepared.poisoning.all_to_all:
        inputs["all_to_all"] = True  # results of the single-point, all-to-one-share detection are not reused
    n = len(prepared.poisoning.dataset)

    def detect() -> Detection:
        if not per_target:
            return run_detector(method, prepared.victim, prepared.factors, config.detection, seed=config.seed,
                                progress=progress)  # fmt: skip
        points = pick_points_per_target(prepared.victim.model, prepared.poisoning, prepared.splits.test,
                                        config.detection.test_points)  # fmt: skip
        found = {}
        for target, (_, images) in points.items():
            with named_stage(f"target {target}"):
                found[target] = run_detector(method, prepared.victim._replace(test_images=images, target=target),
                                             prepared.factors, config.detection, seed=config.seed,
                                             progress=progress)  # fmt: skip
        return merge_detections(found)

    def compute(directory: Path) -> dict:
        found = detect()
        save_array(directory / "flagged.npy", found.flagged)
        save_array(directory / "scores.npy", found.scores)
        arrays = {k: v for k, v in found.extra.items() if isinstance(v, np.ndarray)}
        if arrays:
            save_arrays(directory / "extra.npz", compressed=True, **arrays)
        info = {k: v for k, v in found.extra.items() if not isinstance(v, np.ndarray)}
        metrics = detection_metrics(found.flagged, prepared.poisoning.poison_indices, n, found.scores, found.seconds)
        atomic_write_text(directory / "detection.json", json.dumps({"method": method, **metrics, "info": info},
                                                                   indent=2, default=float))  # fmt: skip
        return {"method": method, **metrics, "info": info}

    with named_stage(f"detect: {DETECTOR_LABELS.get(method, method)}"):
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


def make_selector(prepared: Prepared, flagged, mode: str | None = None) -> Selector | None:
    """How SSD, SCRUB and BadT choose among candidates on held-out data (``None`` without a validation split).

    ``mode`` (default ``unlearning.selection``):

    * ``"clean"`` scores a candidate by its accuracy on the clean validation split and on the
      ``flagged`` training points against the labels they carry, and keeps the one that reproduces
      those labels least among candidates within ``unlearning.selection_tolerance`` of the victim's
      validation accuracy (:func:`~jaxpoison.unlearning.clean_rule`). It needs nothing the paper's
      defender lacks: no trigger, no attack type, no test data.
    * ``"oracle"`` scores poison success on *triggered* validation images (the reference's rule,
      :func:`~jaxpoison.unlearning.oracle_rule`) — knowledge of the attack, so reports label it.
      Witches' Brew has no trigger to apply; its oracle reports a poison success of 0 and so
      selects by validation accuracy alone.
    """
    u = prepared.config.unlearning
    mode = u.selection if mode is None else mode
    validation = prepared.splits.validation
    if validation is None or len(validation) == 0:
        return None
    if mode == "oracle":
        poisoning, source = prepared.poisoning, prepared.config.attack.source

        def oracle_score(model: FunctionalModel) -> dict:
            if poisoning.trigger is None:
                return {"validation_psr": 0.0, "validation_accuracy": accuracy(model, validation)}
            if poisoning.all_to_all:
                metrics = all_to_all_metrics(model, validation, poisoning.trigger)
            else:
                metrics = attack_metrics(model, validation, poisoning.trigger, poisoning.target, source)
            return {"validation_psr": metrics["asr"], "validation_accuracy": metrics["clean_accuracy"]}

        return Selector("oracle", oracle_score, oracle_rule())
    if mode != "clean":
        raise InputError(f"unknown selection {mode!r}; choose 'clean' or 'oracle'.")
    forget, _, forget_idx = split_forget_retain(prepared.poisoning.dataset, flagged)

    def clean_score(model: FunctionalModel) -> dict:
        forget_accuracy = accuracy(model, forget) if forget_idx.size else None
        return {"validation_accuracy": accuracy(model, validation), "forget_accuracy": forget_accuracy}

    reference = accuracy(prepared.victim.model, validation)
    return Selector("clean", clean_score, clean_rule(reference, u.selection_tolerance))


def distill_config(config: RunConfig, method: str, train_size: int) -> DistillConfig:
    """SCRUB's or BadT's optimiser settings, with ``{method}_budget`` of the victim's training as steps.

    The victim sees the training set ``epochs`` times; at the unlearner's batch size one pass
    is ``ceil(train_size / batch)`` steps, so a budget of 0.1 gives a 40-epoch victim's
    unlearner 4 passes (the Δ-Influence paper's setting). Without a budget, ``distill.steps``.
    """
    distill = getattr(config.unlearning, method).distill
    budget = getattr(config.unlearning, f"{method}_budget")
    if budget is None:
        return distill
    per_epoch = math.ceil(train_size / distill.batch_size)
    return dataclasses.replace(distill, steps=max(1, math.ceil(budget * config.victim.recipe.epochs * per_epoch)))


def run_unlearner(prepared: Prepared, method: str, flagged: np.ndarray, *, progress: bool = True) -> UnlearnResult:
    """Apply unlearning ``method`` to the victim given ``flagged`` training indices."""
    config, u = prepared.config, prepared.config.unlearning
    victim, data = prepared.victim.model, prepared.poisoning.dataset
    recipe = config.victim.recipe
    if method == "eu":
        return exact_unlearning(init_model(config.victim, data, config.seed), data, flagged, recipe,
                                seed=config.seed, progress=progress)  # fmt: skip
    if method in ("cf", "cf_reset", "cf_short"):
        cf_recipe = recipe if u.cf is None else u.cf
        if method == "cf_short":
            cf_recipe = cf_recipe.replace(epochs=u.cf_short_epochs, milestones=())
        # Only `cf_reset` touches the output layer: `cf` is the paper's CF, the victim as it is.
        fresh = init_model(config.victim, data, config.seed + 1) if method == "cf_reset" else None
        return continued_training(victim, data, flagged, cf_recipe, fresh_head=fresh, seed=config.seed,
                                  progress=progress)  # fmt: skip
    if method not in ("ssd", "scrub", "badt"):
        raise InputError(f"unknown unlearning method {method!r}.")
    selector = make_selector(prepared, flagged)
    if method == "ssd":
        return selective_synaptic_dampening(victim, data, flagged, u.ssd, selector=selector)
    if method == "scrub":
        scrub_config = dataclasses.replace(u.scrub, distill=distill_config(config, "scrub", len(data)))
        return scrub(victim, data, flagged, scrub_config, selector=selector)
    teacher = init_model(config.victim, data, config.seed + 1)
    badt_config = dataclasses.replace(u.badt, distill=distill_config(config, "badt", len(data)))
    return bad_teacher(victim, teacher, data, flagged, badt_config, selector=selector)


# Fields that choose among candidates: they change the result of the methods that select.
_SELECTION_FIELDS = ("selection", "selection_tolerance")


def unlearner_settings(unlearning: UnlearnConfig, method: str) -> dict:
    """The part of ``unlearning`` that ``method``'s result depends on — its stage key.

    Leaving out the method list and the other methods' settings means that changing, say,
    CF's learning rate reruns CF only, not a finished exact-unlearning retrain. (SCRUB's and
    BadT's step counts also follow the victim recipe and the data size, which the victim's key
    already covers.)
    """
    if method not in UNLEARNER_SPECS:
        raise InputError(f"unknown unlearning method {method!r}; choose from {sorted(UNLEARNER_SPECS)}.")
    fields, selecting = UNLEARNER_SPECS[method]
    values = to_dict(unlearning)
    settings = {k: values[k] for k in fields}
    if selecting:
        settings.update({k: values[k] for k in _SELECTION_FIELDS})
    return settings


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
        try:
            result = run_unlearner(prepared, method, flagged, progress=progress)
            metrics = poison_success(result.model, prepared.poisoning, prepared.config, prepared.splits.test)
        except (UnlearningDiverged, NonFiniteOutputError) as e:  # a result of the method, not a failed run
            return {"detector": detector, "unlearner": method, "selection": None, "psr": None,
                    "clean_accuracy": None, "diverged": str(e), "seconds": time.perf_counter() - start,
                    "info": {"method": method}}  # fmt: skip
        seconds = time.perf_counter() - start
        info = {k: v for k, v in result.info.items() if k != "losses"}
        # "oracle": the candidate was chosen with the trigger (knowledge of the attack); None: nothing chosen
        return {"detector": detector, "unlearner": method, "selection": info.get("selection"), **metrics,
                "seconds": seconds, "info": info}  # fmt: skip

    flags = DETECTOR_LABELS.get(detector, detector)
    with named_stage(f"unlearn: {UNLEARNER_NAMES.get(method, method)} on {flags}'s flags"):
        _, record = prepared.store.run(f"unlearn:{detector}:{method}", inputs, compute)
    return record


# --------------------------------------------------------------------------- the whole run

# Unlearners as the progress bars name them.
UNLEARNER_NAMES = {"eu": "EU", "cf": "CF", "cf_reset": "CF (reset head)", "cf_short": "CF (short)", "ssd": "SSD",
                   "scrub": "SCRUB", "badt": "BadT"}  # fmt: skip


def stage_count(config: RunConfig) -> int:
    """How many stages :func:`run_pipeline` runs (or reuses) for ``config``: the ``N`` of its ``[i/N]`` bars."""
    factors = any(m in NEEDS_FACTORS for m in config.detection.methods)
    detectors = config.unlearning.detectors or config.detection.methods
    return 4 + factors + len(config.detection.methods) + len(detectors) * len(config.unlearning.methods)


def run_pipeline(config: RunConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Poison → train → detect → unlearn → evaluate; writes ``report.json``, ``report.md`` and plots in ``out``."""
    start = time.perf_counter()
    with numbered_stages(stage_count(config)):  # progress bars read "[3/10] victim · epoch 1/3"
        prepared = prepare(config, out, force=force, progress=progress)
        with prepared.store:
            return _run_prepared(prepared, start, progress)


def _run_prepared(prepared: Prepared, start: float, progress: bool) -> dict:
    config = prepared.config
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
