"""Build a poisoned training set: triggered copies relabelled to the attack target.

Dirty-label poisoning as in BadNet and the Δ-Influence reference code:

* ``source=None``: all-to-one — candidates are all examples not already of the target class;
* ``source=c``: source-specific — only class ``c`` is poisoned (victim ``c`` → target);
* ``mode="replace"``: the poisoned image replaces the clean one at the same index
  (the reference Δ-Influence setting); ``mode="append"``: triggered copies are appended
  and the clean originals stay (the FUS setting);
* how many: ``rate`` (a fraction of the *whole* training set, as "1 % poisons"),
  ``count``, or explicit ``indices`` (e.g. chosen by a selection method).

The result carries the ground-truth poison indices and a JSON-ready manifest. Image triggers
poison image datasets (outputs clipped to [0, 1]); a point-cloud trigger
(:mod:`jaxpoison.attacks.pointcloud`) poisons point-cloud datasets (no clipping).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from jaxpoison.attacks.triggers import apply_trigger, trigger_kind
from jaxpoison.data import Dataset, StreamedDataset, require_images
from jaxpoison.data.pointcloud import require_point_clouds
from jaxpoison.errors import InputError


class PoisonError(InputError):
    """The poisoning request cannot be satisfied; the message says what to change."""


def _is_int(value) -> bool:
    # bool is an int subclass in Python, but True as a class index is a mistake, not class 1.
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_indices(indices) -> None:
    try:
        array = np.asarray(indices)
    except (ValueError, TypeError, OverflowError) as e:
        raise PoisonError(f"indices must be a 1-D sequence of training indices ({e}).") from e
    if array.ndim != 1 or array.size == 0:
        raise PoisonError(f"indices must be a non-empty 1-D sequence of training indices; got shape {array.shape}.")
    # np.asarray((1, True)) is an int array: look at the elements for hidden bools.
    hidden_bool = not isinstance(indices, np.ndarray) and any(isinstance(i, (bool, np.bool_)) for i in indices)
    if array.dtype.kind not in "iu" or hidden_bool:
        raise PoisonError(
            f"indices must be integer training indices; got {array.dtype if not hidden_bool else 'booleans'} "
            f"(e.g. {array[:3].tolist()}). Pass positions, e.g. tuple(np.flatnonzero(mask).tolist()) for a mask."
        )


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """Attributes:
    target: the label every poison gets (an integer class index, not a bool).
    source: the victim class for a source-specific attack (``None``: all-to-one); not the target.
    rate: poisons as a fraction of the training set, finite and in (0, 1).
    count: the number of poisons (instead of ``rate``), an integer >= 1.
    indices: explicit indices of the training examples to poison (instead of either), non-empty integers.
    mode: ``"replace"`` or ``"append"``.
    seed: seeds the random choice of poisons, an integer >= 0.

    Anything else is refused with a :class:`PoisonError`; whether the classes exist and the
    candidate pool is large enough is checked against the dataset by :func:`poison_dataset`.
    """

    target: int
    source: int | None = None
    rate: float | None = None
    count: int | None = None
    indices: tuple[int, ...] | None = None
    mode: str = "replace"
    seed: int = 0

    def __post_init__(self):
        for what, value in (("target", self.target), ("source", self.source)):
            if value is None and what == "source":
                continue
            if not _is_int(value) or value < 0:
                raise PoisonError(f"{what} must be a class index (an integer >= 0); got {value!r}.")
        given = sum(v is not None for v in (self.rate, self.count, self.indices))
        if given != 1:
            raise PoisonError("give exactly one of rate, count or indices.")
        if self.source is not None and self.source == self.target:
            raise PoisonError(f"the victim class equals the target ({self.target}); choose a different source class.")
        if not isinstance(self.mode, str) or self.mode not in ("replace", "append"):
            raise PoisonError(f"mode must be 'replace' or 'append'; got {self.mode!r}.")
        if self.rate is not None:
            if not _is_real(self.rate) or not math.isfinite(self.rate):
                raise PoisonError(f"rate must be a finite number in (0, 1); got {self.rate!r}.")
            if not 0.0 < self.rate < 1.0:
                raise PoisonError(f"rate must lie in (0, 1); got {self.rate}.")
        if self.count is not None and (not _is_int(self.count) or self.count < 1):
            raise PoisonError(f"count must be a whole number of poisons >= 1; got {self.count!r}.")
        if self.indices is not None:
            _check_indices(self.indices)
        if not _is_int(self.seed) or self.seed < 0:
            raise PoisonError(f"seed must be an integer >= 0; got {self.seed!r}.")
        # Plain ints from here on: numpy scalars would not serialise into the JSON manifest.
        for field in ("target", "source", "count", "seed"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, int(value))
        if self.rate is not None:
            object.__setattr__(self, "rate", float(self.rate))


class PoisonedDataset(NamedTuple):
    """Attributes:
    dataset: the poisoned training set.
    poison_indices: positions of the poisons in ``dataset`` (sorted).
    source_indices: the original training indices that were triggered (same order).
    manifest: attack, parameters, counts and hashes (JSON-ready).
    """

    dataset: Dataset
    poison_indices: np.ndarray
    source_indices: np.ndarray
    manifest: dict


def candidate_pool(dataset: Dataset, target: int, source: int | None) -> np.ndarray:
    """Indices that may be poisoned: the source class, or every class but the target."""
    if not isinstance(dataset, Dataset | StreamedDataset):
        raise PoisonError(f"poisoning needs a jaxpoison Dataset or StreamedDataset; got {type(dataset).__name__}.")
    if not _is_int(target) or (source is not None and not _is_int(source)):
        raise PoisonError(f"target and source must be integer class indices; got {target!r} and {source!r}.")
    if not 0 <= target < dataset.num_classes:
        raise PoisonError(f"target {target} is not a class of the {dataset.num_classes}-class dataset.")
    if source is not None and not 0 <= source < dataset.num_classes:
        raise PoisonError(f"source {source} is not a class of the {dataset.num_classes}-class dataset.")
    keep = dataset.labels == source if source is not None else dataset.labels != target
    return np.flatnonzero(keep)


def choose_poisons(dataset: Dataset, config: PoisonConfig) -> np.ndarray:
    """The training indices to poison (sorted), as ``config`` asks."""
    pool = candidate_pool(dataset, config.target, config.source)
    if config.indices is not None:
        chosen = np.unique(np.asarray(config.indices, np.int64))
        outside = np.setdiff1d(chosen, pool)
        if chosen.size != len(config.indices):
            raise PoisonError("indices contain duplicates.")
        if outside.size:
            raise PoisonError(
                f"{outside.size} indices are outside the candidate pool (out of range, or of the target class / "
                f"not of the source class), e.g. {outside[:5].tolist()}."
            )
        return chosen
    n = round(config.rate * len(dataset)) if config.rate is not None else int(config.count)
    if n < 1:
        raise PoisonError(f"the request selects {n} poisons; raise the rate or count.")
    if n > pool.size:
        raise PoisonError(f"the request selects {n} poisons but only {pool.size} candidates exist; lower it.")
    return np.sort(np.random.default_rng(config.seed).choice(pool, n, replace=False))


def check_trigger_data(trigger, dataset: Dataset) -> None:
    """Refuse a trigger applied to data of another kind (an image trigger on point clouds, or back).

    Raises:
      DatasetError: naming the trigger and what the dataset holds.
    """
    if trigger_kind(trigger) == "points":
        require_point_clouds(dataset, "a point-cloud trigger")
    else:
        require_images(dataset, "an image trigger (poison_dataset)")


def triggered_inputs(dataset: Dataset, indices, trigger, batch_size: int = 1024) -> np.ndarray:
    """``trigger`` applied to ``dataset``'s examples at ``indices``, in batches (float32; images clipped).

    Args:
      dataset: images or point clouds, as the trigger needs.
      indices: positions of the examples to trigger.
      trigger: any jaxpoison trigger.
      batch_size: examples per call of the trigger.

    Returns:
      ``[len(indices), *dataset.image_shape]`` float32.
    """
    check_trigger_data(trigger, dataset)
    indices = np.asarray(indices, np.int64)
    parts = [apply_trigger(trigger, dataset.images[indices[i : i + batch_size]])
             for i in range(0, indices.size, batch_size)]  # fmt: skip
    return np.concatenate(parts) if parts else dataset.images[:0]


def poison_dataset(dataset: Dataset, trigger, config: PoisonConfig) -> PoisonedDataset:
    """Apply ``trigger`` to the chosen examples, relabel them to ``config.target``.

    Args:
      dataset: the clean training set.
      trigger: any object with ``apply(images) -> images`` and ``describe() -> dict``.
      config: who, how many, replace or append.
    """
    chosen = choose_poisons(dataset, config)  # checks that it is a Dataset at all
    check_trigger_data(trigger, dataset)
    triggered = np.asarray(trigger.apply(dataset.images[chosen]), np.float32)
    expected = (chosen.size, *dataset.image_shape)
    if triggered.shape != expected:
        raise PoisonError(f"the trigger turned images of shape {expected} into {triggered.shape}; it must keep shapes.")
    if not np.isfinite(triggered).all():
        # Clipping would keep NaN and turn inf into 0 or 1: refuse rather than hide it.
        raise PoisonError(
            f"the trigger produced {int((~np.isfinite(triggered)).sum())} non-finite pixel values (NaN or inf); "
            "check its pattern, mask and parameters."
        )
    if trigger_kind(trigger) == "image":
        triggered = np.clip(triggered, 0.0, 1.0)
    if np.array_equal(triggered, dataset.images[chosen]):
        # e.g. a blend ratio or patch opacity of 0: the "poisons" would be relabelled clean images
        raise PoisonError(f"the trigger {trigger.describe()} leaves every chosen image unchanged; give it a non-zero "
                          "strength (blend ratio, opacity) or a pattern that differs from the images.")  # fmt: skip
    images, labels = dataset.images.copy(), dataset.labels.copy()
    if config.mode == "replace":
        images[chosen], labels[chosen] = triggered, config.target
        positions = chosen
    else:
        positions = np.arange(len(dataset), len(dataset) + chosen.size)
        images = np.concatenate([images, triggered])
        labels = np.concatenate([labels, np.full(chosen.size, config.target, np.int32)])
    split = f"{dataset.provenance.split}+poison"
    poisoned = dataset.replace(images=images, labels=labels,
                               provenance=dataclasses.replace(dataset.provenance, split=split))  # fmt: skip
    manifest = {
        "trigger": trigger.describe(),
        "target": config.target,
        "source": config.source,
        "mode": config.mode,
        "seed": config.seed,
        "rate": config.rate,
        "count": int(chosen.size),
        "selection": "explicit indices" if config.indices is not None else "uniform random",
        "clean_hash": dataset.content_hash,
        "poisoned_hash": poisoned.content_hash,
        "clean_size": len(dataset),
        "poisoned_size": len(poisoned),
    }
    return PoisonedDataset(poisoned, positions, chosen, manifest)


def poison_streamed(dataset: StreamedDataset, trigger, config: PoisonConfig) -> PoisonedDataset:
    """Poison a streamed training set without copying it: the trigger is an overlay on the chosen rows.

    The chosen rows are triggered (and clipped to [0, 1]) each time they are read, and
    relabelled to ``config.target``; every other row is read from disk unchanged. Only
    ``"replace"`` mode exists here: appending would have to write new rows.

    Raises:
      PoisonError: an ``"append"`` config, or what :func:`choose_poisons` refuses.
    """
    if not isinstance(dataset, StreamedDataset):
        raise PoisonError(f"poison_streamed needs a StreamedDataset; got {type(dataset).__name__}; use poison_dataset.")
    if config.mode != "replace":
        raise PoisonError("a streamed set is poisoned in place (mode='replace'); appending would copy it.")
    chosen = choose_poisons(dataset, config)
    image_trigger = trigger_kind(trigger) == "image"

    def change(inputs: np.ndarray) -> np.ndarray:
        triggered = np.asarray(trigger.apply(inputs), np.float32)
        return np.clip(triggered, 0.0, 1.0) if image_trigger else triggered

    labels = dataset.labels.copy()  # one integer per example: the only array that is copied
    labels[chosen] = config.target
    poisoned = dataset.with_overlay(chosen, change, labels)
    manifest = {"trigger": trigger.describe(), "target": config.target, "source": config.source, "mode": "replace",
                "seed": config.seed, "rate": config.rate, "count": int(chosen.size),
                "selection": "explicit indices" if config.indices is not None else "uniform random",
                "clean_size": len(dataset), "poisoned_size": len(poisoned), "streamed": True}  # fmt: skip
    return PoisonedDataset(poisoned, chosen, chosen, manifest)
