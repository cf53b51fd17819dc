"""What every unlearning method shares: the forget/retain split, results, and model selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.models import FunctionalModel

# A selection criterion sees a candidate model and returns (poison success, clean accuracy)
# measured on held-out *validation* data — never the test set.
Selector = Callable[[FunctionalModel], tuple[float, float]]


class UnlearnResult(NamedTuple):
    """The unlearned model and what happened (chosen hyper-parameters, candidates tried, steps)."""

    model: FunctionalModel
    info: dict[str, Any]


def split_forget_retain(dataset: Dataset, flagged) -> tuple[Dataset, Dataset, np.ndarray]:
    """``(forget, retain, forget_indices)``: the flagged points and everything else.

    Raises:
      ValueError: indices out of range, not integers, or every point flagged.
    """
    flagged = np.asarray(flagged)
    if flagged.size and not np.issubdtype(flagged.dtype, np.integer):
        raise ValueError(f"flagged indices must be integers; got dtype {flagged.dtype}.")
    flagged = np.unique(flagged.astype(np.int64))
    n = len(dataset)
    if flagged.size and (flagged[0] < 0 or flagged[-1] >= n):
        bad = flagged[(flagged < 0) | (flagged >= n)]
        raise ValueError(f"{bad.size} flagged indices lie outside the training set [0, {n}) (e.g. "
                         f"{bad[:5].tolist()}); they must index the training set the detector ran on.")  # fmt: skip
    if flagged.size == n:
        raise ValueError("every training point is flagged; nothing would be left to retain.")
    keep = np.ones(n, bool)
    keep[flagged] = False
    return dataset.subset(flagged), dataset.subset(np.flatnonzero(keep)), flagged


def select(candidates: Sequence[tuple[Any, FunctionalModel]], selector: Selector | None,
           max_psr: float = 0.1) -> tuple[int, list[dict]]:  # fmt: skip
    """Index of the best candidate: the highest validation accuracy among those with PSR ≤ ``max_psr``,
    else the lowest PSR (the reference's rule, moved from the test set to validation data).

    Without a selector the last candidate wins.
    """
    if not candidates:
        raise ValueError("no candidate models to select from.")
    if selector is None:
        return len(candidates) - 1, []
    scores = []
    for label, model in candidates:
        psr, accuracy = selector(model)
        scores.append({"candidate": label, "validation_psr": float(psr), "validation_accuracy": float(accuracy)})
    ok = [i for i, s in enumerate(scores) if s["validation_psr"] <= max_psr]
    if ok:
        best = max(ok, key=lambda i: scores[i]["validation_accuracy"])
    else:
        best = min(range(len(scores)), key=lambda i: (scores[i]["validation_psr"], -scores[i]["validation_accuracy"]))
    return best, scores
