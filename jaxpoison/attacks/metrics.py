"""Attack metrics: attack success rate, per-class ASR and its variance, clean accuracy."""

from __future__ import annotations

import numpy as np

from jaxpoison.attacks.poison import triggered_inputs
from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel
from jaxpoison.training.evaluate import predict_labels


def attack_metrics(model: FunctionalModel, test: Dataset, trigger, target: int, source: int | None = None) -> dict:
    """How well a backdoored model obeys the trigger, and how it does on clean data.

    ASR is measured on triggered test images of the victim class(es) — the source class,
    or every class but the target — never on images already of the target class. Point
    clouds with a point-cloud trigger are measured the same way.

    Returns:
      ``asr``: fraction of triggered victim images predicted as ``target``;
      ``per_class_asr``: ``{class: asr}`` over victim classes;
      ``class_asr_variance``: the variance of those (the IFS fairness measure);
      ``triggered_accuracy``: accuracy of the triggered victim images against their true labels;
      ``clean_accuracy``: accuracy on the clean test set; ``victims``: how many images were triggered.

    Raises:
      NonFiniteOutputError: the model outputs NaN or infinite logits; argmax would read them
        as class 0 and, with target 0, report a perfect attack.
    """
    clean_pred = predict_labels(model, test)
    victims = np.flatnonzero(test.labels == source) if source is not None else np.flatnonzero(test.labels != target)
    if victims.size == 0:
        raise InputError("the test set has no images of the victim class(es); ASR is undefined.")
    triggered = test.subset(victims).replace(images=triggered_inputs(test, victims, trigger))
    pred = predict_labels(model, triggered)
    labels = test.labels[victims]
    per_class = {int(c): float(np.mean(pred[labels == c] == target)) for c in np.unique(labels)}
    return {
        "asr": float(np.mean(pred == target)),
        "per_class_asr": per_class,
        "class_asr_variance": float(np.var(list(per_class.values()))),
        "triggered_accuracy": float(np.mean(pred == labels)),
        "clean_accuracy": float(np.mean(clean_pred == test.labels)),
        "victims": int(victims.size),
    }
