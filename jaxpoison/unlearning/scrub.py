"""SCRUB (Kurmanji et al. 2023): push the student away from the teacher on the forget set, stay close on the rest.

Student = a copy of the victim, teacher = the frozen victim. Each round makes *max* steps
on the forget set (gradient ascent on ``CE + α · T² · KL(teacher ‖ student)``) while fewer
than ``max_steps`` were made, then *min* steps (descent on the same loss) on the retained
set. Steps are minibatches; the budget is ``distill.steps`` in all (the reference ran 40;
the Δ-Influence paper gives approximate unlearners 10 % of the training budget, which the
pipeline turns into steps), with the reference's α = 0.001, T = 4 and lr 0.025 decaying
linearly. After every round the candidate is scored by a
:class:`~jaxpoison.unlearning.common.Selector` and the chosen one is kept.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxpoison.data import Dataset
from jaxpoison.errors import InputError
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.models import FunctionalModel
from jaxpoison.unlearning.common import Selector, UnlearnResult, select, split_forget_retain
from jaxpoison.unlearning.distill import DistillConfig, kl_to_teacher, make_step, minibatches, optimizer


@dataclasses.dataclass(frozen=True)
class ScrubConfig:
    """Attributes: the shared optimiser settings, max-step cap, KL weight α and temperature T."""

    distill: DistillConfig = DistillConfig()
    max_steps: int = 400
    alpha: float = 0.001
    temperature: float = 4.0

    def __post_init__(self):
        if self.max_steps < 0 or self.alpha < 0 or self.temperature <= 0:
            raise InputError("max_steps and alpha must be ≥ 0 and temperature > 0.")


def scrub(
    victim: FunctionalModel, dataset: Dataset, flagged, config: ScrubConfig = ScrubConfig(), *,
    selector: Selector | None = None,
) -> UnlearnResult:  # fmt: skip
    """SCRUB on the flagged points of ``dataset``; returns the chosen round's model (without a selector, the last)."""
    forget, retain, forget_idx = split_forget_retain(dataset, flagged)
    t = config.temperature

    def loss(params, state, x, y, valid, aux):
        logits, new_state = victim.replace(params=params, state=state).train_logits(x)
        teacher = victim(x)
        per_example = cross_entropy(logits, y) + config.alpha * t * t * kl_to_teacher(logits, teacher, t)
        return jnp.sum(per_example * valid) / jnp.maximum(valid.sum(), 1), new_state

    tx = optimizer(config.distill)
    step = make_step(loss, tx)
    params, state = victim.params, victim.state
    opt_state = tx.init(params)
    forget_batches = minibatches(forget, config.distill.batch_size) if forget_idx.size else None
    retain_batches = minibatches(retain, config.distill.batch_size)
    forget_per_pass = -(-forget_idx.size // min(config.distill.batch_size, max(forget_idx.size, 1)))
    retain_per_pass = -(-len(retain) // min(config.distill.batch_size, len(retain)))
    done, max_done, candidates, losses = 0, 0, [], []
    while done < config.distill.steps:
        if forget_batches is not None and max_done < config.max_steps:
            for _ in range(min(forget_per_pass, config.distill.steps - done)):
                x, y, valid, _ = next(forget_batches)
                params, state, opt_state, value = step(params, state, opt_state, x, y, valid, None, -1.0)
                losses.append(float(value))
                done, max_done = done + 1, max_done + 1
        for _ in range(min(retain_per_pass, config.distill.steps - done)):
            x, y, valid, _ = next(retain_batches)
            params, state, opt_state, value = step(params, state, opt_state, x, y, valid, None, 1.0)
            losses.append(float(value))
            done += 1
        candidates.append(({"step": done}, victim.replace(params=params, state=state)))
    best, scores = select(candidates, selector)
    info = {"method": "scrub", "forgotten": int(forget_idx.size), "steps": done, "max_steps_made": max_done,
            "selection": selector.name if selector else None, "chosen": candidates[best][0], "candidates": scores,
            "losses": losses}  # fmt: skip
    return UnlearnResult(candidates[best][1], info)
