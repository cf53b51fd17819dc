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
restarts re-initialise ``δ`` and the restart whose final ``δ`` reaches the highest
gradient alignment is kept. Success is judged by retraining a fresh model on the
poisoned set (``benchmarks/brew.py``).

One brewing step (the matching loss of every poison batch, its gradient w.r.t. ``δ``,
the signAdam update and the projection) is a single jitted function, compiled once per
model, poison-set shape and step-relevant configuration; the steps of a restart run
back to back on the device, and the host reads a loss only when progress is reported.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset, augment_batch, require_images
from jaxpoison.errors import InputError
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.models import FunctionalModel
from jaxpoison.progress import progress_bar


@dataclasses.dataclass(frozen=True)
class BrewConfig:
    """Attributes:
    epsilon: ℓ∞ budget in pixel units (16/255 by default).
    steps: optimisation steps (each a pass over all poisons).
    restarts: independent brews; the one with the highest final alignment wins.
    learning_rate: Adam step size on the signed gradient, in units of ``epsilon``. The
      reference's 0.1 acts on perturbations in normalised units, where 16/255 is about
      0.25; 0.4·ε is the same step relative to the budget.
    batch_size: poisons per gradient batch.
    augment: shift (``padding`` px) and flip the poisons while brewing.
    padding: shift range of the augmentation (``None``: an eighth of the image side, at
      least 1 — 4 px on 32×32 images, as in the reference).
    seed: seeds initialisation and augmentation.
    """

    epsilon: float = 16 / 255
    steps: int = 250
    restarts: int = 8
    learning_rate: float = 0.4
    batch_size: int = 512
    augment: bool = True
    padding: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.epsilon <= 1.0:
            raise InputError(f"epsilon must lie in (0, 1] (pixel units); got {self.epsilon}.")
        if self.steps < 1 or self.restarts < 1 or self.batch_size < 1:
            raise InputError("steps, restarts and batch_size must be ≥ 1.")
        if self.padding is not None and self.padding < 0:
            raise InputError(f"padding must be ≥ 0 pixels (None: an eighth of the image side); got {self.padding}.")


class Brew(NamedTuple):
    """Attributes:
    perturbations: ``δ`` ``[P, H, W, C]`` for the poisons, in pixel units.
    losses: ``[restarts, steps]`` matching loss at the start of each step (the mean of
      the batch losses, weighted by batch size; augmented when the config augments).
    best_restart: index of the kept restart (the highest ``alignments``).
    alignments: ``[restarts]`` gradient alignment of each restart's final ``δ``: the cosine
      between the target's adversarial gradient and the gradient of the mean loss over
      all poisons, without augmentation (what a victim that does not augment sees).
    """

    perturbations: np.ndarray
    losses: np.ndarray
    best_restart: int
    alignments: np.ndarray | None = None


# --------------------------------------------------------------------------- pure pieces


def _tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _mean_ce(model, params, x, y) -> jax.Array:
    """Mean cross-entropy of a pixel-space batch under ``model`` with ``params``."""
    return jnp.mean(jax.vmap(cross_entropy)(model.replace(params=params)(x), y))


def _optimizer(config: BrewConfig) -> optax.GradientTransformation:
    """signAdam's Adam, with the reference's ×0.1 steps at steps/2.667, /1.6, /1.142."""
    milestones = {int(config.steps / d + 1e-6): 0.1 for d in (2.667, 1.6, 1.142)}
    milestones = {k: v for k, v in milestones.items() if k}
    return optax.adam(optax.piecewise_constant_schedule(config.learning_rate * config.epsilon, milestones))


def _project(delta: jax.Array, images: jax.Array, epsilon: float) -> jax.Array:
    """Onto the ℓ∞ ball of radius ``epsilon``, then so that ``images + delta`` stays in [0, 1]."""
    delta = jnp.clip(delta, -epsilon, epsilon)
    return jnp.clip(images + delta, 0.0, 1.0) - images


def _batches(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches of ``range(n)``; the last may be smaller.

    The compiled step unrolls a Python loop over them. A ``lax.map`` would compile one
    body for all full batches, but on CPU its while loop ran the convolutions ~30× slower.
    """
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _batch_matching(model, config: BrewConfig, g_target, key, delta, x, y):
    """``(1 − cos, ∂(1 − cos)/∂δ)`` of one poison batch; ``g_target`` has unit norm.

    With ``g = ∇θ L(x + δ)``, ``c = ⟨g_t, g⟩`` and ``n = ‖g‖ + 1e-12``,
    ``∂(c/n)/∂δ = ⟨v, ∂g/∂δ⟩`` for the fixed ``v = g_t/n − c·g/(‖g‖·n²)``, and
    ``⟨v, ∂g/∂δ⟩ = ∇δ (∂L/∂θ · v)``: the gradient of a directional derivative, which
    costs a forward-mode pass instead of differentiating through the whole backward pass.
    """

    def poison_loss(p, d):
        z = x + d
        if config.augment:
            z = augment_batch(key, z, config.padding, True)
        return _mean_ce(model, p, z, y)

    params = model.params
    g = jax.grad(poison_loss)(params, delta)
    g_norm = jnp.sqrt(_tree_vdot(g, g))
    n = g_norm + 1e-12
    c = _tree_vdot(g_target, g)
    v = jax.tree.map(lambda t, gi: t / n - c * gi / (g_norm * n * n), g_target, g)
    v = jax.lax.stop_gradient(v)
    directional = lambda d: jax.jvp(lambda p: poison_loss(p, d), (params,), (v,))[1]
    return 1.0 - c / n, -jax.grad(directional)(delta)


@jax.jit
def _target_gradient(model, x, y):
    """Unit-norm ``∇θ`` of the target's loss toward the intended class (pixel-space ``x``)."""
    g = jax.grad(lambda p: _mean_ce(model, p, x, y))(model.params)
    return jax.tree.map(lambda t: t / jnp.sqrt(_tree_vdot(g, g)), g)


@functools.partial(jax.jit, static_argnames=("config",))
def _brew_step(model, config: BrewConfig, g_target, images, labels, delta, opt_state, key, step):
    """One signAdam step over all poisons: ``(delta, opt_state, loss at the old delta)``.

    Batch ``b`` of step ``s`` augments with ``fold_in(fold_in(key, s), b)``. Only
    ``config``'s step-relevant fields matter (the caller zeroes ``seed`` and ``restarts``
    so that they do not cause recompilation).
    """
    step_key = jax.random.fold_in(key, step)
    total, grads = 0.0, []
    for b, idx in enumerate(_batches(images.shape[0], config.batch_size)):
        loss, grad = _batch_matching(model, config, g_target, jax.random.fold_in(step_key, b), delta[idx],
                                     images[idx], labels[idx])  # fmt: skip
        total = total + loss * grad.shape[0]
        grads.append(grad)
    grads = jnp.concatenate(grads)
    updates, opt_state = _optimizer(config).update(jnp.sign(grads), opt_state, delta)
    delta = _project(optax.apply_updates(delta, updates), images, config.epsilon)
    return delta, opt_state, total / images.shape[0]


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _alignment(model, batch_size: int, g_target, images, labels) -> jax.Array:
    """Cosine between ``g_target`` (unit norm) and ``∇θ`` of the mean loss over all ``images`` (no augmentation)."""

    def summed_grad(x, y):
        # Summed, not averaged, so that batches of different sizes add up to the full set's gradient.
        return jax.grad(lambda p: jnp.sum(jax.vmap(cross_entropy)(model.replace(params=p)(x), y)))(model.params)

    parts = [summed_grad(images[idx], labels[idx]) for idx in _batches(images.shape[0], batch_size)]
    g = jax.tree.map(lambda *leaves: sum(leaves), *parts)
    return _tree_vdot(g_target, g) / jnp.sqrt(_tree_vdot(g, g))


# --------------------------------------------------------------------------- the attack


def brew_poisons(
    model: FunctionalModel,
    dataset: Dataset,
    poison_indices: np.ndarray,
    target_image: np.ndarray,
    intended_class: int,
    config: BrewConfig = BrewConfig(),
    *,
    progress: bool = True,
    report_every: int = 10,
) -> Brew:
    """Brew perturbations for ``dataset.images[poison_indices]`` against one target image.

    Args:
      model: the clean-trained model (its params are held fixed).
      dataset: the training set (pixel space; the model normalises it).
      poison_indices: which training images to perturb (usually of ``intended_class``).
      target_image: ``[H, W, C]`` pixel-space test image to be misclassified.
      intended_class: the label the target image should receive.
      config: budget, steps, restarts, learning rate, augmentation.
      progress: show a progress bar per restart.
      report_every: with ``progress``, read the loss back (a host sync) every this many steps.

    Returns:
      A :class:`Brew`; apply it with :func:`apply_brew`.
    """
    require_images(dataset, "Witches' Brew")
    poison_indices = np.asarray(poison_indices)
    if poison_indices.size == 0:
        raise InputError("no poison indices given.")
    if np.asarray(target_image).shape != dataset.image_shape:
        raise InputError(f"target_image must have shape {dataset.image_shape}; got {np.asarray(target_image).shape}.")
    if config.padding is None:
        config = dataclasses.replace(config, padding=max(1, dataset.image_shape[0] // 8))
    g_target = _target_gradient(model, jnp.asarray(target_image, jnp.float32)[None], jnp.asarray([intended_class]))
    images = jnp.asarray(dataset.images[poison_indices], jnp.float32)
    labels = jnp.asarray(dataset.labels[poison_indices])
    step_config = dataclasses.replace(config, seed=0, restarts=1)  # the static part of the compiled step
    optimizer = _optimizer(config)
    run_step = functools.partial(_brew_step, model, step_config, g_target, images, labels)

    all_losses, deltas, alignments = [], [], []
    key = jax.random.key(config.seed)
    for restart in range(config.restarts):
        key, init_key = jax.random.split(key)
        delta = _project(jax.random.normal(init_key, images.shape) * config.epsilon, images, config.epsilon)
        opt_state = optimizer.init(delta)
        losses = []
        with progress_bar(total=config.steps, desc=f"brew restart {restart + 1}/{config.restarts}",
                          disable=not progress) as bar:
            for step in range(config.steps):
                delta, opt_state, loss = run_step(delta, opt_state, key, jnp.int32(step))
                losses.append(loss)
                if progress and ((step + 1) % report_every == 0 or step + 1 == config.steps):
                    bar.update(step + 1 - bar.n)
                    bar.set_postfix(loss=f"{float(loss):.4f}")  # the only host sync inside a restart
        all_losses.append(jnp.stack(losses))
        deltas.append(delta)
        alignments.append(_alignment(model, config.batch_size, g_target, images + delta, labels))
    losses, alignments = np.asarray(jnp.stack(all_losses)), np.asarray(jnp.stack(alignments))
    best = int(np.argmax(alignments))
    return Brew(np.asarray(deltas[best]), losses, best, alignments)


def gradient_alignment(
    model: FunctionalModel,
    dataset: Dataset,
    poison_indices: np.ndarray,
    perturbations: np.ndarray | float,
    target_image: np.ndarray,
    intended_class: int,
    batch_size: int = 512,
) -> float:
    """Cosine between the target's adversarial gradient and the poisons' gradient, without augmentation.

    ``perturbations`` is added to ``dataset.images[poison_indices]`` (``0.0``: the clean
    poisons, the alignment a brew starts from); :attr:`Brew.alignments` holds this value
    for each restart's final ``δ``.
    """
    g_target = _target_gradient(model, jnp.asarray(target_image, jnp.float32)[None], jnp.asarray([intended_class]))
    images = jnp.asarray(dataset.images[np.asarray(poison_indices)], jnp.float32) + jnp.asarray(perturbations)
    labels = jnp.asarray(dataset.labels[np.asarray(poison_indices)])
    return float(_alignment(model, batch_size, g_target, images, labels))


def apply_brew(dataset: Dataset, poison_indices: np.ndarray, brew: Brew) -> Dataset:
    """The training set with the brewed perturbations added; labels are unchanged (clean-label)."""
    images = dataset.images.copy()
    images[np.asarray(poison_indices)] = np.clip(images[np.asarray(poison_indices)] + brew.perturbations, 0.0, 1.0)
    return dataset.replace(images=images)
