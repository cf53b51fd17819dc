"""Exact unlearning (EU) and catastrophic forgetting (CF): training on the retained set.

* **EU** retrains from a fresh initialisation on the retained set with the victim's recipe
  — the gold standard, at the price of a full training run.
* **CF** continues training the *victim* on the retained set: with the full recipe (the
  Δ-Influence reference's CF) or a short fine-tune (``epochs`` fewer), relying on the
  network forgetting what the flagged points taught it.
"""

from __future__ import annotations

from jaxpoison.data import Dataset
from jaxpoison.models import FunctionalModel
from jaxpoison.training import TrainRecipe, train
from jaxpoison.unlearning.common import UnlearnResult, split_forget_retain


def exact_unlearning(
    init: FunctionalModel, dataset: Dataset, flagged, recipe: TrainRecipe, *, seed: int = 0, progress: bool = True
) -> UnlearnResult:
    """EU: train ``init`` (a freshly initialised model) on ``dataset`` without the ``flagged`` points."""
    _, retain, forget = split_forget_retain(dataset, flagged)
    result = train(init, retain, recipe, seed=seed, progress=progress)
    model = init._replace(params=result.params, state=result.state)
    return UnlearnResult(model, {"method": "eu", "forgotten": int(forget.size), "epochs": recipe.epochs})


def continued_training(
    victim: FunctionalModel, dataset: Dataset, flagged, recipe: TrainRecipe, *, seed: int = 0, progress: bool = True
) -> UnlearnResult:
    """CF: keep training the victim on ``dataset`` without the ``flagged`` points."""
    _, retain, forget = split_forget_retain(dataset, flagged)
    result = train(victim, retain, recipe, seed=seed, progress=progress)
    model = victim._replace(params=result.params, state=result.state)
    return UnlearnResult(model, {"method": "cf", "forgotten": int(forget.size), "epochs": recipe.epochs})
