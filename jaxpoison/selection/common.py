"""What every selection method shares: the result type, the poison budget, poisoned
candidates, jitted forward passes, and the proxy-model trainer of FUS, RD and IFS.

Every selector answers the same question — which ``k = round(rate · N)`` training
indices of the non-target pool should carry the trigger and the target label in a
dirty-label, all-to-one backdoor — and returns a :class:`Selection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from jaxpoison.attacks.poison import candidate_pool, triggered_inputs
from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel, create_model, to_functional
from jaxpoison.sharding import data_mesh
from jaxpoison.training import adam_recipe, train
from jaxpoison.training.evaluate import forward as evaluate_forward


class SelectionError(InputError):
    """A selection request cannot be satisfied; the message says what to change."""


class Selection(NamedTuple):
    """The chosen poisons and how they were chosen.

    Attributes:
      indices: ``int64 [k]``, sorted, unique training indices, all in the non-target pool.
      scores: ``float64 [k]``, aligned with ``indices``: the method's score of each chosen
        index (forgetting events for FUS, RD for RD, high-frequency energy for HFE,
        influence for IFS); ``NaN`` where the method has no score for it (every index
        of RS; indices FUS and RD drew at random after their last evaluation).
      info: what happened: ``method``, ``k``, ``seconds``, per-round records and
        method-specific details (documented by each selector).
    """

    indices: np.ndarray
    scores: np.ndarray
    info: dict[str, Any]


def poison_budget(dataset: Dataset, target: int, rate: float) -> tuple[np.ndarray, int]:
    """``(pool, k)``: the non-target candidate indices and the number of poisons ``round(rate · N)``.

    Raises:
      SelectionError: ``target`` is not a class of the dataset, ``rate`` is not in (0, 1),
        or it selects no poison or more poisons than the pool holds.
    """
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise SelectionError(f"target must be an integer class index; got {target!r}.")
    if not 0 <= int(target) < dataset.num_classes:
        raise SelectionError(
            f"target {target} is not a class of the {dataset.num_classes}-class dataset; "
            f"choose one in [0, {dataset.num_classes})."
        )
    if not isinstance(rate, float | int | np.floating) or not 0.0 < float(rate) < 1.0:
        raise SelectionError(f"rate must be a fraction in (0, 1) of the training set; got {rate!r}.")
    pool = candidate_pool(dataset, int(target), None).astype(np.int64)
    k = round(float(rate) * len(dataset))
    if k < 1:
        raise SelectionError(
            f"rate {rate} selects {k} poisons from {len(dataset)} training examples; raise it to at least "
            f"{0.5 / len(dataset):.2g}."
        )
    if k > pool.size:
        raise SelectionError(
            f"rate {rate} selects {k} poisons but only {pool.size} training examples are outside the target "
            f"class {target}; lower the rate to at most {pool.size / len(dataset):.3g}."
        )
    return pool, k


def finish(indices, scores, info: dict) -> Selection:
    """Sort ``indices`` (carrying ``scores`` along) into a :class:`Selection`; checks uniqueness."""
    indices = np.asarray(indices, np.int64)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(indices, kind="stable")
    indices, scores = indices[order], scores[order]
    if np.unique(indices).size != indices.size:  # a bug, never a user error
        raise AssertionError("selection produced duplicate indices.")
    return Selection(indices, scores, info)


def triggered(dataset: Dataset, indices, trigger, target: int, batch_size: int = 1024) -> Dataset:
    """The poisoned versions of ``dataset[indices]``: triggered (images clipped to [0, 1]) and labelled ``target``.

    The trigger is applied in batches, so a whole pool can be passed; point clouds take a
    point-cloud trigger.
    """
    indices = np.asarray(indices, np.int64)
    images = triggered_inputs(dataset, indices, trigger, batch_size)
    return dataset.subset(indices, split=f"{dataset.provenance.split}[triggered]").replace(
        images=images, labels=np.full(indices.size, target, np.int32)
    )


def forward(model: FunctionalModel, dataset: Dataset, batch_size: int = 512, *, output: str = "logits") -> np.ndarray:
    """The model's ``output`` over ``dataset``: the library's one forward pass, at batch 512."""
    return evaluate_forward(model, dataset, batch_size, output=output)


class ProxyTrainer:
    """Trains fresh copies of one architecture with Adam.

    FUS and RD train a new proxy model every round on a poisoned set of the same size. The
    loop is :func:`jaxpoison.training.train` itself, given a hook that sees the model after
    every epoch (FUS records its per-epoch correctness there); its train step is compiled
    once per architecture, recipe and batch shape, so later rounds (and later selection runs)
    reuse it.
    """

    def __init__(self, model: str, model_kwargs: dict, dataset: Dataset, *, epochs: int, learning_rate: float,
                 batch_size: int, num_examples: int | None = None):  # fmt: skip
        """``dataset`` gives the image shape, classes and normalisation; ``num_examples`` the size of the
        sets :meth:`fit` will train on (default ``len(dataset)``; FUS's append mode trains on ``N + k``)."""
        self.name, self.kwargs = model, dict(model_kwargs)
        self.shape, self.classes = dataset.image_shape, dataset.num_classes
        self.n = len(dataset) if num_examples is None else int(num_examples)
        if batch_size > self.n:
            raise SelectionError(f"proxy batch_size {batch_size} exceeds the {self.n} training examples; lower it.")
        self.mesh = data_mesh()
        if batch_size % self.mesh.devices.size:
            raise SelectionError(
                f"proxy batch_size {batch_size} is not divisible by the {self.mesh.devices.size} devices."
            )
        self.recipe = adam_recipe(epochs, learning_rate, batch_size)
        self.mean, self.std = dataset.mean, dataset.std
        self.init(0)  # a model that cannot be built is refused here, before any training

    def init(self, seed: int) -> FunctionalModel:
        """A fresh proxy initialised from ``seed``, normalising with the training set's constants."""
        try:
            module = create_model(self.name, self.shape, self.classes, seed=seed, **self.kwargs)
        except TypeError as err:
            raise SelectionError(f"model {self.name!r} does not take the arguments {self.kwargs}: {err}") from None
        return to_functional(module, self.mean, self.std)

    def fit(self, dataset: Dataset, seed: int, on_epoch: Callable | None = None, *, progress: bool = False,
            desc: str = "proxy epochs") -> FunctionalModel:  # fmt: skip
        """A model initialised from ``seed`` and trained on ``dataset``; ``on_epoch(epoch, model)`` after each epoch."""
        if len(dataset) != self.n:
            raise AssertionError("ProxyTrainer.fit needs a dataset of the size it was built for.")
        result = train(self.init(seed), dataset, self.recipe, seed=seed, mesh=self.mesh, progress=progress,
                       on_epoch_state=on_epoch, desc=desc)  # fmt: skip
        return result.model


def round_seed(seed: int, round_index: int, salt: int = 0) -> int:
    """A derived 31-bit seed for round ``round_index`` (so rounds train differently initialised proxies)."""
    return int(np.random.default_rng([seed, round_index, salt]).integers(2**31 - 1))
