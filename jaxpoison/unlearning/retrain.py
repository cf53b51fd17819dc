"""Exact unlearning (EU) and catastrophic forgetting (CF): training on the retained set.

* **EU** retrains from a fresh initialisation on the retained set with the victim's recipe
  — the gold standard, at the price of a full training run.
* **CF** continues training the *victim* on the retained set: with the full recipe (the
  Δ-Influence paper's and reference's CF) or a short fine-tune (``epochs`` fewer), relying
  on the network forgetting what the flagged points taught it.
* **CF with a reset head** (``cf_reset``, a jaxpoison variant, not the paper's CF) first
  re-initialises the victim's output layer: the trigger→target mapping then has to be
  re-learnt from the retained set, where a few missed poisons cannot teach it again in a short
  run, while the feature extractor keeps what the clean data taught it.
"""

from __future__ import annotations

from jaxpoison.data import Dataset
from jaxpoison.models import FunctionalModel, output_layer, replace_layer
from jaxpoison.training import TrainRecipe, train
from jaxpoison.unlearning.common import UnlearnResult, split_forget_retain


def exact_unlearning(
    init: FunctionalModel, dataset: Dataset, flagged, recipe: TrainRecipe, *, seed: int = 0, progress: bool = True
) -> UnlearnResult:
    """EU: train ``init`` (a freshly initialised model) on ``dataset`` without the ``flagged`` points."""
    _, retain, forget = split_forget_retain(dataset, flagged)
    result = train(init, retain, recipe, seed=seed, progress=progress)
    model = result.model
    return UnlearnResult(model, {"method": "eu", "forgotten": int(forget.size), "epochs": recipe.epochs})


def continued_training(
    victim: FunctionalModel,
    dataset: Dataset,
    flagged,
    recipe: TrainRecipe,
    *,
    fresh_head: FunctionalModel | None = None,
    seed: int = 0,
    progress: bool = True,
) -> UnlearnResult:
    """CF: keep training the victim on ``dataset`` without the ``flagged`` points.

    Args:
      fresh_head: a freshly initialised model of the victim's architecture; when given, its
        output layer replaces the victim's before training (CF with a reset head, ``cf_reset``).
    """
    _, retain, forget = split_forget_retain(dataset, flagged)
    start = victim
    if fresh_head is not None:
        start = replace_layer(victim, output_layer(victim, dataset.image_shape), fresh_head)
    result = train(start, retain, recipe, seed=seed, progress=progress)
    model = result.model
    info = {"method": "cf" if fresh_head is None else "cf_reset", "forgotten": int(forget.size),
            "epochs": recipe.epochs, "reset_head": fresh_head is not None}  # fmt: skip
    return UnlearnResult(model, info)
