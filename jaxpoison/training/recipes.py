"""Training recipes: optimiser, schedule, batch size, epochs and augmentation.

Two presets:

* :func:`reference_recipe` — the victim recipe of the Δ-Influence reference code:
  SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4 (coupled, as in
  PyTorch), batch 128, 40 epochs, lr ×0.1 at epochs 14, 25 and 35, random crop with
  4-pixel padding and horizontal flips.
* :func:`adam_recipe` — Adam for the small models (MLP, CNN) used in tests,
  demos and the Fashion-MNIST benchmarks.
"""

from __future__ import annotations

import dataclasses

import optax

from jaxpoison.errors import InputError


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """Everything that defines how a model is trained (not what on).

    Attributes:
      optimizer: ``"sgd"`` or ``"adam"``.
      learning_rate: peak learning rate.
      epochs: passes over the training set.
      batch_size: global batch size (split across devices).
      momentum: SGD momentum (ignored by Adam).
      nesterov: Nesterov momentum for SGD.
      weight_decay: coupled L2 decay added to the gradient (PyTorch semantics).
      milestones: epochs at which the learning rate is multiplied by ``gamma``.
      gamma: the learning-rate factor at each milestone.
      crop_padding: random-crop padding in pixels (0 disables the crop).
      flip: random horizontal flips.
      vflip: random vertical flips (the Δ-Influence reference trains its CIFAR victims with both).
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    crop_padding: int = 0
    flip: bool = False
    vflip: bool = False

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose 'sgd' or 'adam'.")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be positive; got {self.learning_rate}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch_size must be ≥ 1; got {self.epochs} and {self.batch_size}.")
        if self.weight_decay < 0 or self.crop_padding < 0:
            raise InputError("weight_decay and crop_padding must be non-negative.")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise InputError(f"milestones must be increasing epochs ≥ 1; got {self.milestones}.")

    def replace(self, **changes) -> TrainRecipe:
        return dataclasses.replace(self, **changes)

    def schedule(self, steps_per_epoch: int) -> optax.Schedule:
        """Piecewise-constant learning rate, stepped at epoch boundaries."""
        boundaries = {m * steps_per_epoch: self.gamma for m in self.milestones if m < self.epochs}
        return optax.piecewise_constant_schedule(self.learning_rate, boundaries)

    def optimizer_for(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """The optax optimiser this recipe describes."""
        lr = self.schedule(steps_per_epoch)
        if self.optimizer == "sgd":
            base = optax.sgd(lr, momentum=self.momentum or None, nesterov=self.nesterov)
        else:
            base = optax.adam(lr)
        if self.weight_decay:
            return optax.chain(optax.add_decayed_weights(self.weight_decay), base)
        return base


def reference_recipe(epochs: int = 40) -> TrainRecipe:
    """The Δ-Influence victim recipe; milestones scale with ``epochs`` as in the reference code."""
    # epochs / 2.667, / 1.6, / 1.142, floored: 14, 25, 35 at 40 epochs. The small epsilon
    # keeps 40 / 1.6 at 25 (plain float floor division gives 24.999... -> 24).
    milestones = tuple(sorted({int(epochs / d + 1e-6) for d in (2.667, 1.6, 1.142)} - {0}))
    return TrainRecipe(
        optimizer="sgd",
        learning_rate=0.1,
        epochs=epochs,
        batch_size=128,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        milestones=milestones,
        gamma=0.1,
        crop_padding=4,
        flip=True,
    )


def adam_recipe(epochs: int = 10, learning_rate: float = 1e-3, batch_size: int = 128) -> TrainRecipe:
    """Adam without augmentation, for small models."""
    return TrainRecipe(optimizer="adam", learning_rate=learning_rate, epochs=epochs, batch_size=batch_size)


RECIPES = {"reference": reference_recipe, "adam": adam_recipe}


def get_recipe(name: str, epochs: int | None = None) -> TrainRecipe:
    """A preset by name (``"reference"`` or ``"adam"``), optionally with another epoch count."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]() if epochs is None else RECIPES[name](epochs=epochs)
