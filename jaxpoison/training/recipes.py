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
import math
import numbers

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
      milestones: epochs at which the learning rate is multiplied by ``gamma``; strictly
        increasing, each inside ``(0, epochs)``.
      gamma: the learning-rate factor at each milestone.
      crop_padding: random-crop padding in pixels (0 disables the crop).
      flip: random horizontal flips.
      vflip: random vertical flips (the Δ-Influence reference trains its CIFAR victims with both).

    Raises:
      InputError: at construction, naming the first field out of range (a non-finite or
        non-positive learning rate, an unknown optimiser, ...).
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
        # Refused here, before any step runs: a NaN learning rate trains to NaN without a word.
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose 'sgd' or 'adam'.")
        _require("learning_rate", self.learning_rate, _real(self.learning_rate) and self.learning_rate > 0,
                 "a finite number > 0")  # fmt: skip
        _require("weight_decay", self.weight_decay, _real(self.weight_decay) and self.weight_decay >= 0,
                 "a finite number ≥ 0")  # fmt: skip
        _require("momentum", self.momentum, _real(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)")
        _require("gamma", self.gamma, _real(self.gamma) and self.gamma > 0, "a finite number > 0")
        _require("epochs", self.epochs, _integer(self.epochs) and self.epochs >= 1, "an integer ≥ 1")
        _require("batch_size", self.batch_size, _integer(self.batch_size) and self.batch_size >= 1, "an integer ≥ 1")
        _require("crop_padding", self.crop_padding, _integer(self.crop_padding) and self.crop_padding >= 0,
                 "an integer ≥ 0")  # fmt: skip
        milestones = tuple(self.milestones) if isinstance(self.milestones, (tuple, list)) else (None,)
        # A milestone at or past the last epoch would never fire; a repeated one would fire once, not twice.
        inside = all(_integer(m) and 0 < m < self.epochs for m in milestones)
        _require("milestones", self.milestones, inside and list(milestones) == sorted(set(milestones)),
                 f"strictly increasing epochs inside (0, epochs={self.epochs})")  # fmt: skip

    def replace(self, **changes) -> TrainRecipe:
        """A copy with ``changes``; shortening ``epochs`` alone drops the milestones the shorter run never reaches."""
        epochs = changes.get("epochs")
        if "milestones" not in changes and _integer(epochs):
            changes["milestones"] = tuple(m for m in self.milestones if m < epochs)
        return dataclasses.replace(self, **changes)

    def schedule(self, steps_per_epoch: int) -> optax.Schedule:
        """Piecewise-constant learning rate, stepped at epoch boundaries."""
        boundaries = {m * steps_per_epoch: self.gamma for m in self.milestones}
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


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require(field: str, value, holds: bool, what: str) -> None:
    if not holds:
        raise InputError(f"TrainRecipe.{field} must be {what}; got {value!r}.")


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
