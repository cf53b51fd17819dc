"""Witches' Brew (Geiping et al. 2021): clean-label poisons by gradient matching.

Poisons are training images of the *intended* class that keep their correct labels.
Their pixels get a small perturbation ``δ`` (``‖δ‖∞ ≤ ε``, ``x + δ ∈ [0, 1]``) chosen so
that the training gradient of the poisons points the same way as the gradient that
would make the model classify one *target* test image as the intended class:

    minimise  1 − cos(∇θ L(x_target, y_intended), ∇θ L(x_poison + δ, y_poison))

over all parameters. Each step accumulates ``∂loss/∂δ`` over all poison batches,
takes its sign, and feeds it to Adam (the reference "signAdam"), with the learning
rate ×0.1 at steps/2.667, /1.6, /1.142. Differentiable augmentation (random shifts and
flips) is applied while brewing, so the poisons survive the victim's augmentation;
restarts re-initialise ``δ`` and the lowest-loss brew is kept. Success is judged by
retraining a fresh model on the poisoned set.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxpoison.data import Dataset, augment_batch, normalize
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.models import FunctionalModel


@dataclasses.dataclass(frozen=True)
class BrewConfig:
    """Attributes:
    epsilon: ℓ∞ budget in pixel units (16/255 by default).
    steps: optimisation steps (each a pass over all poisons).
    restarts: independent brews; the lowest final loss wins.
    learning_rate: Adam step size on the signed gradient, in units of ``epsilon``. The
      reference's 0.1 acts on perturbations in normalised units, where 16/255 is about
      0.25; 0.4·ε is the same step relative to the budget.
    batch_size: poisons per gradient batch.
    augment: shift (``padding`` px) and flip the poisons while brewing.
    padding: shift range of the augmentation.
    seed: seeds initialisation and augmentation.
    """

    epsilon: float = 16 / 255
    steps: int = 250
    restarts: int = 8
    learning_rate: float = 0.4
    batch_size: int = 512
    augment: bool = True
    padding: int = 4
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in (0, 1] (pixel units); got {self.epsilon}.")
        if self.steps < 1 or self.restarts < 1 or self.batch_size < 1:
            raise ValueError("steps, restarts and batch_size must be ≥ 1.")


class Brew(NamedTuple):
    """Attributes:
    perturbations: ``δ`` ``[P, H, W, C]`` for the poisons, in pixel units.
    losses: ``[restarts, steps]`` matching loss after each step.
    best_restart: index of the kept restart.
    """

    perturbations: np.ndarray
    losses: np.ndarray
    best_restart: int


def _flat_grad(model: FunctionalModel, params, x, y):
    grads = jax.grad(lambda p: jnp.mean(jax.vmap(cross_entropy)(model.apply(p, model.state, x), y)))(params)
    return jnp.concatenate([g.reshape(-1) for g in jax.tree.leaves(grads)])


def brew_poisons(
    model: FunctionalModel,
    dataset: Dataset,
    poison_indices: np.ndarray,
    target_image: np.ndarray,
    intended_class: int,
    config: BrewConfig = BrewConfig(),
    *,
    progress: bool = True,
) -> Brew:
    """Brew perturbations for ``dataset.images[poison_indices]`` against one target image.

    Args:
      model: the clean-trained model (its params are held fixed).
      dataset: the training set (pixel space; normalised with its constants).
      poison_indices: which training images to perturb (usually of ``intended_class``).
      target_image: ``[H, W, C]`` pixel-space test image to be misclassified.
      intended_class: the label the target image should receive.
      config: budget, steps, restarts, learning rate, augmentation.

    Returns:
      A :class:`Brew`; apply it with :func:`apply_brew`.
    """
    poison_indices = np.asarray(poison_indices)
    if poison_indices.size == 0:
        raise ValueError("no poison indices given.")
    if np.asarray(target_image).shape != dataset.image_shape:
        raise ValueError(f"target_image must have shape {dataset.image_shape}; got {np.asarray(target_image).shape}.")
    mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
    params = model.params
    x_t = normalize(jnp.asarray(target_image)[None], mean, std)
    g_target = _flat_grad(model, params, x_t, jnp.asarray([intended_class]))
    g_target = g_target / jnp.linalg.norm(g_target)
    images = jnp.asarray(dataset.images[poison_indices])
    labels = jnp.asarray(dataset.labels[poison_indices])
    n = images.shape[0]
    batches = [np.arange(s, min(s + config.batch_size, n)) for s in range(0, n, config.batch_size)]

    def matching_loss(delta, x, y, key):
        z = x + delta
        if config.augment:
            z = augment_batch(key, z, config.padding, True)
        g = _flat_grad(model, params, normalize(z, mean, std), y)
        return 1.0 - jnp.dot(g_target, g) / (jnp.linalg.norm(g) + 1e-12)

    loss_and_grad = jax.jit(jax.value_and_grad(matching_loss))
    milestones = {int(config.steps / d + 1e-6): 0.1 for d in (2.667, 1.6, 1.142)}
    schedule = optax.piecewise_constant_schedule(config.learning_rate * config.epsilon,
                                                 {k: v for k, v in milestones.items() if k})  # fmt: skip
    optimizer = optax.adam(schedule)

    def project(delta):
        delta = jnp.clip(delta, -config.epsilon, config.epsilon)
        return jnp.clip(images + delta, 0.0, 1.0) - images

    all_losses, deltas = [], []
    key = jax.random.key(config.seed)
    for restart in range(config.restarts):
        key, init_key = jax.random.split(key)
        delta = project(jax.random.normal(init_key, images.shape) * config.epsilon)
        opt_state = optimizer.init(delta)
        losses = []
        for step in tqdm(range(config.steps), desc=f"brew {restart + 1}/{config.restarts}", disable=not progress,
                         leave=False):  # fmt: skip
            grad = jnp.zeros_like(delta)
            total = 0.0
            for b, idx in enumerate(batches):
                step_key = jax.random.fold_in(jax.random.fold_in(key, step), b)
                loss, g = loss_and_grad(delta[idx], images[idx], labels[idx], step_key)
                grad = grad.at[idx].set(g)
                total += float(loss) * idx.size / n
            updates, opt_state = optimizer.update(jnp.sign(grad), opt_state, delta)
            delta = project(optax.apply_updates(delta, updates))
            losses.append(total)
        all_losses.append(losses)
        deltas.append(delta)
    losses = np.asarray(all_losses)
    best = int(np.argmin(losses[:, -1]))
    return Brew(np.asarray(deltas[best]), losses, best)


def apply_brew(dataset: Dataset, poison_indices: np.ndarray, brew: Brew) -> Dataset:
    """The training set with the brewed perturbations added; labels are unchanged (clean-label)."""
    images = dataset.images.copy()
    images[np.asarray(poison_indices)] = np.clip(images[np.asarray(poison_indices)] + brew.perturbations, 0.0, 1.0)
    return dataset.replace(images=images)
