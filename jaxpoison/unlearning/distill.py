"""The training loop SCRUB and Bad Teacher share: SGD on a distillation loss, sequential minibatches.

Matches the reference's unlearning optimiser: SGD, momentum 0.9, weight decay 5e-4,
learning rate ``lr · (1 − t / (1.25 · steps))`` (linear decay, no warm-up), steps counted
in minibatches. The student trains in training mode (BatchNorm batch statistics);
teachers run in inference mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.training import iterate_padded


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Attributes: minibatch steps, peak learning rate, momentum, weight decay, batch size."""

    steps: int = 40
    learning_rate: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 512

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise InputError("steps and batch_size must be ≥ 1.")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise InputError("learning_rate must be positive and weight_decay non-negative.")


def optimizer(config: DistillConfig) -> optax.GradientTransformation:
    schedule = lambda t: config.learning_rate * (1.0 - t / (1.25 * config.steps))
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule, momentum=config.momentum))


def kl_to_teacher(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Per-example ``Σ_c p_t (log p_t − log p_s)`` at ``temperature`` (teacher distribution first)."""
    log_s = jax.nn.log_softmax(student_logits / temperature)
    log_t = jax.nn.log_softmax(teacher_logits / temperature)
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)


def minibatches(dataset: Dataset, batch_size: int) -> Iterator[tuple[jax.Array, jax.Array, jax.Array, np.ndarray]]:
    """Sequential fixed-shape minibatches ``(x pixel space, y, valid, indices)``, cycling forever."""
    if len(dataset) == 0:
        raise InputError("cannot iterate over an empty set.")
    batch_size = min(batch_size, len(dataset))
    while True:
        for idx, valid in iterate_padded(len(dataset), batch_size):
            x = jnp.asarray(dataset.images[idx])
            yield x, jnp.asarray(dataset.labels[idx]), jnp.asarray(valid, jnp.float32), idx


# loss(params, state, x, y, valid, aux) -> (scalar, new_state), aux: per-batch extra arrays
StepLoss = Callable


def make_step(loss: StepLoss, tx: optax.GradientTransformation):
    """A jitted ``step(params, state, opt_state, x, y, valid, aux, sign)``; ``sign = −1`` ascends."""

    # No buffer donation: callers keep earlier parameters as selection candidates.
    @jax.jit
    def step(params, state, opt_state, x, y, valid, aux, sign):
        (value, new_state), grads = jax.value_and_grad(
            lambda p: (lambda v, s: (sign * v, s))(*loss(p, state, x, y, valid, aux)), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, sign * value

    return step
