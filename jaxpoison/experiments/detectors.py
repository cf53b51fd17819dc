"""Run any detector of a :class:`~jaxpoison.experiments.config.DetectionConfig` on a victim.

Every detector returns the same :class:`Detection`: flagged indices, a continuous
suspicion score per training point (for ROC curves), wall time, and extras for plots.
``seconds`` excludes the EK-FAC factor fit, which Δ-Influence and the EK-FAC threshold
share and which is reported once as its own stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.detection.activation_clustering import activation_clustering
from jaxpoison.detection.delta_influence import delta_influence
from jaxpoison.detection.features import penultimate_features
from jaxpoison.detection.freqdef import freqdef_detect, train_freqdef
from jaxpoison.detection.spectral import spectral_signatures, spectral_signatures_reference
from jaxpoison.detection.threshold import ekfac_threshold, trak_threshold
from jaxpoison.errors import InputError
from jaxpoison.experiments.config import DetectionConfig
from jaxpoison.experiments.registry import DETECTOR_LABELS, NEEDS_FACTORS
from jaxpoison.influence import Factors
from jaxpoison.models import FunctionalModel

DELTA_MODES = {"delta_influence": "both", "delta_label_only": "label", "delta_image_only": "image"}
LABELS = DETECTOR_LABELS


class Detection(NamedTuple):
    """``flagged`` indices, ``scores [N]`` (higher = more suspicious), ``seconds``, ``extra`` arrays/info."""

    flagged: np.ndarray
    scores: np.ndarray
    seconds: float
    extra: dict[str, Any]


class Victim(NamedTuple):
    """What a detector may look at: the model, its (poisoned) training set, identified poisoned test points.

    ``test_images`` is ``[k, H, W, C]`` (k ≥ 1) triggered images the model assigns to ``target``;
    ``clean_train`` is clean data FreqDef may train on (a defender's own clean set);
    ``poison_rate`` is the defender's assumed poison share (spectral signatures need it);
    ``all_to_all``: the poisons are spread over every class (one target per class), so a class
    holds about ``poison_rate`` of poisons rather than the target-class share of an all-to-one
    attack (:func:`class_poison_share`).
    """

    model: FunctionalModel
    train: Dataset
    test_images: np.ndarray
    target: int
    clean_train: Dataset
    poison_rate: float
    all_to_all: bool = False


def target_class_share(rate: float, num_classes: int) -> float:
    """Expected poison share inside the target class of an all-to-one attack at ``rate``."""
    return rate / (1.0 / num_classes + rate)


def class_poison_share(victim: Victim) -> float:
    """The poison share spectral signatures assume per class: the target class's share for an
    all-to-one attack, the rate itself for all-to-all (each class receives a ``1/C`` of the
    poisons, relabelled from the class before it, and loses as many)."""
    if victim.all_to_all:
        return float(victim.poison_rate)
    return target_class_share(victim.poison_rate, victim.train.num_classes)


def merge_detections(found: Mapping[int, Detection]) -> Detection:
    """One detection from several runs of a detector, one per target class: the union of their
    flags, the maximum of their scores (each is "higher = more suspicious"), the sum of their seconds.

    ``extra`` records the targets and how many points each run flagged.
    """
    if not found:
        raise InputError("no per-target detection to merge: no target class had an identified test point.")
    targets = sorted(found)
    flagged = np.unique(np.concatenate([np.asarray(found[t].flagged, np.int64) for t in targets]))
    scores = np.max(np.stack([np.asarray(found[t].scores, np.float64) for t in targets]), axis=0)
    extra = {"targets": targets, "flagged_per_target": [int(np.size(found[t].flagged)) for t in targets]}
    return Detection(flagged, scores, float(sum(found[t].seconds for t in targets)), extra)


def run_detector(
    method: str,
    victim: Victim,
    factors: Factors | None,
    config: DetectionConfig,
    *,
    seed: int = 0,
    features: np.ndarray | None = None,
    progress: bool = True,
) -> Detection:
    """Run detector ``method`` (see ``LABELS``) and time it."""
    if method in NEEDS_FACTORS and factors is None:
        raise InputError(f"{method} needs fitted EK-FAC factors; fit them first.")
    score_config = config.scores
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if method in DELTA_MODES:
        result = delta_influence(victim.model, victim.train, victim.test_images, victim.target, factors,
                                 config.delta.replace(modify=DELTA_MODES[method], seed=seed), score_config,
                                 progress=progress)  # fmt: skip
        flagged, scores = result.flagged, result.scores
        query = result.queries[0]
        extra = {"delta": result.delta[0], "old": result.old[0], "transforms": list(query.transforms),
                 "labels": query.labels.tolist(), "phases": result.seconds}  # fmt: skip
    elif method == "ekfac":
        result = ekfac_threshold(victim.model, victim.train, victim.test_images, victim.target, factors, score_config,
                                 config.ekfac_threshold, progress=progress)  # fmt: skip
        flagged, scores, extra = result.flagged, result.scores, {"thresholds": list(result.thresholds)}
    elif method == "trak":
        trak = dataclasses.replace(config.trak, seed=seed)
        result = trak_threshold(victim.model, victim.train, victim.test_images, victim.target, trak,
                                progress=progress)  # fmt: skip
        flagged, scores, extra = result.flagged, result.scores, {"thresholds": list(result.thresholds)}
    elif method in ("spectral", "spectral_reference", "activation_clustering"):
        if features is None:
            features = penultimate_features(victim.model, victim.train, progress=progress)
        if method == "spectral":
            share = class_poison_share(victim)
            result = spectral_signatures(features, victim.train.labels, share)
        elif method == "spectral_reference":
            result = spectral_signatures_reference(features)
        else:
            result = activation_clustering(features, victim.train.labels, seed=seed)
        flagged, scores = result.flagged, result.scores
    elif method == "freqdef":
        detector = train_freqdef(victim.clean_train, dataclasses.replace(config.freqdef, seed=seed), progress=progress)
        flagged, scores = freqdef_detect(detector, victim.train)
    else:
        raise InputError(f"unknown detector {method!r}; choose one of {tuple(LABELS)}.")
    seconds = time.perf_counter() - start
    return Detection(np.asarray(flagged, np.int64), np.asarray(scores, np.float64), seconds, extra)
