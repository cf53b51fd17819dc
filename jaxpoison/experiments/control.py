"""The no-poison control: what each detector flags when there is nothing to find.

A detector that flags 2,000 points on a poisoned victim is only informative next to
what it flags on a model trained without poisons. The control takes the run's clean
model (same data, recipe and seed as the victim, no trigger anywhere), a test image
that model gets wrong, and runs every detector as if that image were the identified
poisoned test point, its wrong prediction playing the attack's target. Every flag is
then a false positive: the control reports how many points each detector flags
(``n_flagged``, ``fpr``) and has no TPR.

Stages live in the run's store beside the poisoned ones (``control:test_point``,
``control:factors``, ``control:detect:METHOD``), so a rerun reuses them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.detection.metrics import detection_metrics
from jaxpoison.errors import InputError
from jaxpoison.experiments.config import to_dict
from jaxpoison.experiments.detectors import Victim, run_detector
from jaxpoison.experiments.registry import INFLUENCE_BASED, NEEDS_FACTORS
from jaxpoison.fileio import save_array
from jaxpoison.influence import NUMERICS_VERSION, fit_factors, load_factors, save_factors
from jaxpoison.models import FunctionalModel
from jaxpoison.training import predict_logits


def misclassified_test_point(model: FunctionalModel, test: Dataset) -> tuple[int, int]:
    """``(index, predicted class)`` of the first test image ``model`` gets wrong.

    Raises:
      ValueError: the model classifies every test image correctly (no point to start from).
    """
    predicted = predict_logits(model, test).argmax(-1)
    wrong = np.flatnonzero(predicted != test.labels)
    if wrong.size == 0:
        raise InputError("the clean model classifies every test image correctly; the no-poison control needs one "
                         "misclassified test point (use a larger test set).")  # fmt: skip
    return int(wrong[0]), int(predicted[wrong[0]])


def control_stage(prepared, methods: tuple[str, ...], *, progress: bool = True) -> dict[str, dict]:
    """Run (or reuse) every detector of ``methods`` on the clean model; ``{method: record}``.

    ``prepared`` is a :class:`~jaxpoison.experiments.pipeline.Prepared`. Each record holds
    :func:`~jaxpoison.detection.metrics.detection_metrics` with no poisons (``tpr`` and
    ``auroc`` are ``None``; ``fpr`` is the share of the training set flagged).
    """
    config, store = prepared.config, prepared.store
    clean_key = prepared.keys["clean"]
    train, test = prepared.splits.train, prepared.splits.test

    def pick(directory: Path) -> dict:
        index, predicted = misclassified_test_point(prepared.clean, test)
        return {"test_index": index, "true_label": int(test.labels[index]), "predicted": predicted}

    point_key, point = store.run("control:test_point", {"clean": clean_key}, pick)
    images = test.images[[point["test_index"]]]
    # The defender's assumed poison rate is the same as in the poisoned run (spectral signatures use it).
    rate = prepared.poisoning.poison_indices.size / len(prepared.poisoning.dataset)
    victim = Victim(prepared.clean, train, images, int(point["predicted"]), train, rate)

    factors, factor_key = None, None
    if any(m in NEEDS_FACTORS for m in methods):
        factor_config = dataclasses.replace(config.detection.factors, seed=config.seed)

        def fit(directory: Path) -> dict:
            fitted = fit_factors(prepared.clean, train, factor_config, checkpoint_dir=directory / "partial",
                                 progress=progress)  # fmt: skip
            save_factors(directory / "factors", fitted)
            return {"fisher": factor_config.fisher}

        factor_key, _ = store.run("control:factors", {"clean": clean_key, "factors": dataclasses.asdict(factor_config),
                                                      "numerics": NUMERICS_VERSION}, fit)  # fmt: skip
        factors = load_factors(store.path("control:factors") / "factors", prepared.clean)

    settings = {k: v for k, v in to_dict(config.detection).items() if k != "methods"}
    records = {}
    for method in methods:
        inputs = {"method": method, "detection": settings, "seed": config.seed, "point": point_key,
                  "factors": factor_key if method in NEEDS_FACTORS else None,
                  "numerics": NUMERICS_VERSION if method in INFLUENCE_BASED else None}  # fmt: skip

        def compute(directory: Path, method=method) -> dict:
            found = run_detector(method, victim, factors, config.detection, seed=config.seed, progress=progress)
            save_array(directory / "flagged.npy", found.flagged)
            metrics = detection_metrics(found.flagged, [], len(train), found.scores, found.seconds)
            return {"method": method, **metrics, "test_point": point}

        _, records[method] = store.run(f"control:detect:{method}", inputs, compute)
    return records
