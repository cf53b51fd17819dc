"""Bad Teacher (Chundawat et al. 2023): distil from an incompetent teacher on the forget set.

Two teachers: a randomly initialised copy of the network for the flagged points and the
victim for every other point. The student (a copy of the victim) minimises
``KL(teacher ‖ student)`` at T = 1, averaged over batch × classes (PyTorch's default
``kl_div`` reduction, as in the reference), on the whole training set in order, for
``distill.steps`` minibatches. Every ``eval_every`` steps (and at the end) the model becomes
a candidate; a :class:`~jaxpoison.unlearning.common.Selector` picks one.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel
from jaxpoison.unlearning.common import Selector, UnlearnResult, select, split_forget_retain
from jaxpoison.unlearning.distill import DistillConfig, kl_to_teacher, make_step, minibatches, optimizer


@dataclasses.dataclass(frozen=True)
class BadTeacherConfig:
    """Attributes: the shared optimiser settings, temperature, how often candidates are scored."""

    distill: DistillConfig = DistillConfig()
    temperature: float = 1.0
    eval_every: int = 10

    def __post_init__(self):
        if self.temperature <= 0 or self.eval_every < 1:
            raise InputError("temperature must be > 0 and eval_every ≥ 1.")


def bad_teacher(
    victim: FunctionalModel, random_teacher: FunctionalModel, dataset: Dataset, flagged,
    config: BadTeacherConfig = BadTeacherConfig(), *, selector: Selector | None = None,
) -> UnlearnResult:  # fmt: skip
    """Bad-teacher distillation; ``random_teacher`` is a freshly initialised model of the same architecture."""
    _, _, forget_idx = split_forget_retain(dataset, flagged)
    is_forget = np.zeros(len(dataset), np.float32)
    is_forget[forget_idx] = 1.0
    t = config.temperature
    num_classes = dataset.num_classes

    def loss(params, state, x, y, valid, forget):
        logits, new_state = victim.replace(params=params, state=state).train_logits(x)
        good = victim(x)
        bad = random_teacher(x)
        teacher = jnp.where(forget[:, None] > 0, bad, good)
        per_example = kl_to_teacher(logits, teacher, t) / num_classes  # mean over classes, then over the batch
        return jnp.sum(per_example * valid) / jnp.maximum(valid.sum(), 1), new_state

    tx = optimizer(config.distill)
    step = make_step(loss, tx)
    params, state = victim.params, victim.state
    opt_state = tx.init(params)
    batches = minibatches(dataset, config.distill.batch_size)
    candidates, losses = [], []
    for done in range(1, config.distill.steps + 1):
        x, y, valid, idx = next(batches)
        params, state, opt_state, value = step(params, state, opt_state, x, y, valid, jnp.asarray(is_forget[idx]), 1.0)
        losses.append(float(value))
        if done % config.eval_every == 0 or done == config.distill.steps:
            candidates.append(({"step": done}, victim.replace(params=params, state=state)))
    best, scores = select(candidates, selector)
    info = {"method": "badt", "forgotten": int(forget_idx.size), "steps": config.distill.steps,
            "selection": selector.name if selector else None, "chosen": candidates[best][0], "candidates": scores,
            "losses": losses}  # fmt: skip
    return UnlearnResult(candidates[best][1], info)
