"""What every unlearning method shares: the forget/retain split, results, and model selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel
from jaxpoison.training.evaluate import NonFiniteOutputError


class UnlearningDiverged(InputError):
    """Every candidate an unlearner produced has non-finite outputs: there is no model to report."""


class Selector(NamedTuple):
    """How candidate models (checkpoints, grid points) are scored and which one wins.

    Attributes:
      name: ``"clean"`` (clean validation data and the flagged set only: what a defender without
        knowledge of the attack can measure) or ``"oracle"`` (PSR on *triggered* validation
        images: uses the attack's trigger, so results chosen this way are labelled as such).
      score: a candidate model → its scores, measured on held-out validation data and the
        flagged set, never the test set.
      choose: the list of score dicts → the index of the chosen candidate.
    """

    name: str
    score: Callable[[FunctionalModel], dict[str, float | None]]
    choose: Callable[[Sequence[dict]], int]


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
        raise InputError(f"flagged indices must be integers; got dtype {flagged.dtype}.")
    flagged = np.unique(flagged.astype(np.int64))
    n = len(dataset)
    if flagged.size and (flagged[0] < 0 or flagged[-1] >= n):
        bad = flagged[(flagged < 0) | (flagged >= n)]
        raise InputError(f"{bad.size} flagged indices lie outside the training set [0, {n}) (e.g. "
                         f"{bad[:5].tolist()}); they must index the training set the detector ran on.")  # fmt: skip
    if flagged.size == n:
        raise InputError("every training point is flagged; nothing would be left to retain.")
    keep = np.ones(n, bool)
    keep[flagged] = False
    return dataset.subset(flagged), dataset.subset(np.flatnonzero(keep)), flagged


def select(candidates: Sequence[tuple[Any, FunctionalModel]], selector: Selector | None) -> tuple[int, list[dict]]:
    """``(index of the chosen candidate, every candidate's scores)``; without a selector the last one wins.

    A candidate whose outputs are non-finite (its unlearning run diverged) is listed with
    ``"diverged": True`` and never chosen.

    Raises:
      InputError: no candidates.
      UnlearningDiverged: every candidate diverged.
    """
    if not candidates:
        raise InputError("no candidate models to select from.")
    if selector is None:
        return len(candidates) - 1, []
    scores, finite = [], []
    for i, (label, model) in enumerate(candidates):
        try:
            scores.append({"candidate": label, **selector.score(model)})
            finite.append(i)
        except NonFiniteOutputError:
            scores.append({"candidate": label, "diverged": True})
    if not finite:
        raise UnlearningDiverged(f"every one of the {len(candidates)} unlearning candidates diverged (non-finite "
                                 "outputs); lower the unlearner's learning rate.")  # fmt: skip
    return finite[selector.choose([scores[i] for i in finite])], scores


def oracle_rule(max_psr: float = 0.1) -> Callable[[Sequence[dict]], int]:
    """The reference's rule on ``validation_psr`` / ``validation_accuracy`` scores: the highest
    accuracy among candidates with PSR ≤ ``max_psr``, else the lowest PSR.

    It needs the trigger to measure PSR, i.e. knowledge of the attack.
    """

    def choose(scores: Sequence[dict]) -> int:
        ok = [i for i, s in enumerate(scores) if s["validation_psr"] <= max_psr]
        if ok:
            return max(ok, key=lambda i: scores[i]["validation_accuracy"])
        return min(range(len(scores)), key=lambda i: (scores[i]["validation_psr"], -scores[i]["validation_accuracy"]))

    return choose


def clean_rule(reference_accuracy: float, tolerance: float) -> Callable[[Sequence[dict]], int]:
    """A rule that needs no knowledge of the attack, on ``validation_accuracy`` (clean validation
    data) and ``forget_accuracy`` (the flagged points against the labels they carry) scores.

    Among the candidates whose validation accuracy is at most ``tolerance`` below
    ``reference_accuracy`` (the model before unlearning), the one that agrees least with the
    flagged labels wins; ties go to the higher validation accuracy. Why: a defender only knows
    that the flagged points are suspected poisons; what they taught the model is exactly the
    mapping from their images to their labels (for a backdoor, triggered image → target class),
    so the less a candidate still reproduces it, the more it has unlearned — while the accuracy
    floor keeps it from buying that by damaging the model, and bounds what the clean points
    among the flagged ones can cost. When no candidate keeps the accuracy, the most accurate wins.
    With nothing flagged (``forget_accuracy`` is ``None``) accuracy alone decides.
    """
    if tolerance < 0:
        raise InputError(f"the accuracy tolerance must be ≥ 0; got {tolerance}.")

    def choose(scores: Sequence[dict]) -> int:
        if not scores:
            raise InputError("no candidate scores to choose from.")
        floor = reference_accuracy - tolerance
        ok = [i for i, s in enumerate(scores) if s["validation_accuracy"] >= floor and s["forget_accuracy"] is not None]
        if ok:
            return min(ok, key=lambda i: (scores[i]["forget_accuracy"], -scores[i]["validation_accuracy"], i))
        return max(range(len(scores)), key=lambda i: (scores[i]["validation_accuracy"], -i))

    return choose
