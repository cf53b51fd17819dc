"""The all-to-all BadNet attack: every class has its own target, the next class.

A poison of class ``y`` carries the trigger and the label ``(y + 1) mod C``, so a backdoored
model sends a triggered image of any class to the class after it. The poisons are drawn
uniformly from the whole training set (no class is excluded: no class is its own target),
in place, like :func:`~jaxpoison.attacks.poison_dataset` in ``"replace"`` mode.

Attack success is measured against each image's own target:

* **ASR** (attack success rate) = the share of triggered test images ``x`` of class ``y``
  that the model classifies as ``(y + 1) mod C``. Every test image is a victim, since
  ``(y + 1) mod C ≠ y`` for ``C ≥ 2``; an image predicted as any other wrong class counts
  as a failure of the attack, not a success.
* **PSR** (poison success rate, the pipeline's name) is the same number after the victim,
  or an unlearned model, is evaluated.

For example, with ``C = 3``, labels ``[0, 1, 2, 2]`` and predictions on the triggered
images ``[1, 2, 0, 1]``, the targets are ``[1, 2, 0, 0]`` and ASR = 3/4.
"""

from __future__ import annotations

import numpy as np

from jaxpoison.attacks.poison import PoisonedDataset, PoisonError, check_trigger_data, triggered_inputs
from jaxpoison.attacks.triggers import trigger_kind
from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel
from jaxpoison.training.evaluate import predict_labels


def all_to_all_targets(labels, num_classes: int) -> np.ndarray:
    """Each example's attack target, ``(label + 1) mod num_classes``.

    Args:
      labels: integer class labels in ``[0, num_classes)``.
      num_classes: the number of classes, at least 2.

    Returns:
      int32 array of the same shape as ``labels``.

    Raises:
      InputError: fewer than 2 classes, or a label outside ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    if int(num_classes) != num_classes or num_classes < 2:
        raise InputError(f"an all-to-all attack needs at least 2 classes; got {num_classes}.")
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must be integer classes in [0, {num_classes}); got {labels.dtype} values "
                         f"in [{labels.min()}, {labels.max()}].")  # fmt: skip
    return ((labels.astype(np.int64) + 1) % int(num_classes)).astype(np.int32)


def all_to_all_asr(predictions, labels, num_classes: int) -> float:
    """ASR of an all-to-all attack: the share of triggered images predicted as ``(label + 1) mod C``.

    Args:
      predictions: the model's classes for the triggered images.
      labels: the images' true (clean) classes, same shape.
      num_classes: ``C``.

    Returns:
      A float in [0, 1].

    Raises:
      InputError: shapes differ, no images, or labels outside ``[0, C)``.

    Example:
      >>> all_to_all_asr([1, 2, 0, 1], [0, 1, 2, 2], 3)
      0.75
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise InputError(f"predictions and labels must be 1-D of equal length; got {predictions.shape} and "
                         f"{labels.shape}.")  # fmt: skip
    if labels.size == 0:
        raise InputError("no triggered images: the all-to-all ASR is undefined.")
    return float(np.mean(predictions == all_to_all_targets(labels, num_classes)))


def poison_all_to_all(
    dataset: Dataset, trigger, *, rate: float | None = None, count: int | None = None,
    indices=None, seed: int = 0,
) -> PoisonedDataset:  # fmt: skip
    """Trigger the chosen training examples and relabel each from ``y`` to ``(y + 1) mod C``.

    Args:
      dataset: the clean training set (images).
      trigger: any jaxpoison image trigger (BadNet's patch in the pipeline).
      rate: poisons as a fraction of the training set, in (0, 1).
      count: the number of poisons (instead of ``rate``).
      indices: explicit training indices to poison (instead of either).
      seed: seeds the uniform draw of poisons.

    Returns:
      A :class:`~jaxpoison.attacks.PoisonedDataset` (poisons replace the clean images in place);
      its manifest has ``"target": "all-to-all (y + 1) mod C"``.

    Raises:
      PoisonError: not exactly one of ``rate``, ``count``, ``indices``, or a request the
        training set cannot satisfy.
    """
    if sum(v is not None for v in (rate, count, indices)) != 1:
        raise PoisonError("give exactly one of rate, count or indices.")
    check_trigger_data(trigger, dataset)
    if trigger_kind(trigger) != "image":
        raise PoisonError("the all-to-all attack takes an image trigger.")
    n = len(dataset)
    if indices is not None:
        chosen = np.unique(np.asarray(indices, np.int64))
        if chosen.size != len(indices) or chosen.size == 0 or chosen.min() < 0 or chosen.max() >= n:
            raise PoisonError(f"indices must be distinct training indices in [0, {n}).")
    else:
        if rate is not None and not 0 < rate < 1:
            raise PoisonError(f"rate must lie in (0, 1); got {rate}.")
        budget = max(1, round(rate * n)) if rate is not None else int(count)
        if not 1 <= budget <= n:
            raise PoisonError(f"the request selects {budget} poisons from a {n}-image training set.")
        chosen = np.sort(np.random.default_rng(seed).choice(n, budget, replace=False))
    triggered = np.clip(triggered_inputs(dataset, chosen, trigger), 0.0, 1.0)
    images, labels = dataset.images.copy(), dataset.labels.copy()
    images[chosen] = triggered
    labels[chosen] = all_to_all_targets(labels[chosen], dataset.num_classes)
    poisoned = dataset.replace(images=images, labels=labels)
    manifest = {"trigger": trigger.describe(), "target": "all-to-all (y + 1) mod C", "source": None,
                "mode": "replace", "seed": seed, "rate": rate, "count": int(chosen.size),
                "selection": "explicit indices" if indices is not None else "uniform random",
                "clean_hash": dataset.content_hash, "poisoned_hash": poisoned.content_hash,
                "clean_size": n, "poisoned_size": n}  # fmt: skip
    return PoisonedDataset(poisoned, chosen, chosen, manifest)


def all_to_all_metrics(model: FunctionalModel, test: Dataset, trigger) -> dict:
    """How well a model obeys an all-to-all trigger, and how it does on clean data.

    Every test image is triggered and counts toward ASR against its own target
    ``(y + 1) mod C`` (see :func:`all_to_all_asr`).

    Returns:
      ``asr``; ``per_class_asr`` (``{true class: asr}``); ``class_asr_variance``;
      ``triggered_accuracy`` (triggered images still predicted as their true class);
      ``clean_accuracy``; ``victims`` (how many images were triggered). The keys match
      :func:`~jaxpoison.attacks.attack_metrics`.
    """
    if len(test) == 0:
        raise InputError("the test set is empty; ASR is undefined.")
    clean_pred = predict_labels(model, test)
    victims = np.arange(len(test))
    triggered = test.replace(images=triggered_inputs(test, victims, trigger))
    pred = predict_labels(model, triggered)
    labels = test.labels
    hits = pred == all_to_all_targets(labels, test.num_classes)
    per_class = {int(c): float(np.mean(hits[labels == c])) for c in np.unique(labels)}
    return {
        "asr": all_to_all_asr(pred, labels, test.num_classes),
        "per_class_asr": per_class,
        "class_asr_variance": float(np.var(list(per_class.values()))),
        "triggered_accuracy": float(np.mean(pred == labels)),
        "clean_accuracy": float(np.mean(clean_pred == labels)),
        "victims": int(victims.size),
    }
