"""Build a poisoned training set: triggered copies relabelled to the attack target.

Dirty-label poisoning as in BadNet and the Δ-Influence reference code:

* ``source=None``: all-to-one — candidates are all examples not already of the target class;
* ``source=c``: source-specific — only class ``c`` is poisoned (victim ``c`` → target);
* ``mode="replace"``: the poisoned image replaces the clean one at the same index
  (the reference Δ-Influence setting); ``mode="append"``: triggered copies are appended
  and the clean originals stay (the FUS setting);
* how many: ``rate`` (a fraction of the *whole* training set, as "1 % poisons"),
  ``count``, or explicit ``indices`` (e.g. chosen by a selection method).

The result carries the ground-truth poison indices and a JSON-ready manifest.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError


class PoisonError(InputError):
    """The poisoning request cannot be satisfied; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """Attributes:
    target: the label every poison gets.
    source: the victim class for a source-specific attack (``None``: all-to-one).
    rate: poisons as a fraction of the training set, in (0, 1).
    count: the number of poisons (instead of ``rate``).
    indices: explicit indices of the training examples to poison (instead of either).
    mode: ``"replace"`` or ``"append"``.
    seed: seeds the random choice of poisons.
    """

    target: int
    source: int | None = None
    rate: float | None = None
    count: int | None = None
    indices: tuple[int, ...] | None = None
    mode: str = "replace"
    seed: int = 0

    def __post_init__(self):
        given = sum(v is not None for v in (self.rate, self.count, self.indices))
        if given != 1:
            raise PoisonError("give exactly one of rate, count or indices.")
        if self.source is not None and self.source == self.target:
            raise PoisonError(f"the victim class equals the target ({self.target}); choose a different source class.")
        if self.mode not in ("replace", "append"):
            raise PoisonError(f"mode must be 'replace' or 'append'; got {self.mode!r}.")
        if self.rate is not None and not 0.0 < self.rate < 1.0:
            raise PoisonError(f"rate must lie in (0, 1); got {self.rate}.")


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


def poison_dataset(dataset: Dataset, trigger, config: PoisonConfig) -> PoisonedDataset:
    """Apply ``trigger`` to the chosen examples, relabel them to ``config.target``.

    Args:
      dataset: the clean training set.
      trigger: any object with ``apply(images) -> images`` and ``describe() -> dict``.
      config: who, how many, replace or append.
    """
    chosen = choose_poisons(dataset, config)
    triggered = np.asarray(trigger.apply(dataset.images[chosen]), np.float32)
    triggered = np.clip(triggered, 0.0, 1.0)
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
