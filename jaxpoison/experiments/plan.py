"""The plan of a run before it starts: every streamed stage's batch, compute and memory.

:func:`plan_run` compiles (without running) the step of each stage a configuration will
stream — the victim's training step, the factor passes, the Δ-Influence and EK-FAC scoring
passes — for the model and dataset shapes of the run, and reads XLA's figures: FLOPs and
memory per step, and, with the training-set size, steps and FLOPs per pass. ``jaxpoison plan
PRESET`` prints it; :func:`check_plan_fits` refuses a run whose step would not fit a memory
budget, naming the stage, the batch-size key and the largest batch that fits, and
:func:`fit_batches` lowers each such batch size to that largest one instead.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.data import get_spec
from jaxpoison.errors import InputError
from jaxpoison.experiments.config import ConfigError, RunConfig, apply_overrides
from jaxpoison.experiments.registry import NEEDS_FACTORS
from jaxpoison.influence.plan import StageCost, compiled_cost, influence_stage_costs, largest_batch_within
from jaxpoison.models import create_model, to_functional
from jaxpoison.training.train import train_step


class StagePlan(NamedTuple):
    """One streamed stage of a run: its step's costs, the config key of its batch size, and its steps."""

    cost: StageCost
    batch_key: str
    steps: int | None  # None when the training-set size is unknown

    @property
    def total_flops(self) -> float | None:
        return None if self.steps is None else self.cost.flops * self.steps


def _model(config: RunConfig, image_shape, num_classes: int):
    module = create_model(config.victim.model, image_shape, num_classes, seed=config.seed)
    return to_functional(module, [0.0] * image_shape[-1], [1.0] * image_shape[-1])


def _train_cost(config: RunConfig, model, image_shape, batch_size: int) -> StageCost:
    recipe = config.victim.recipe.replace(batch_size=batch_size)
    opt_state = recipe.optimizer_for(1).init(model.params)
    x = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return compiled_cost("victim training", batch_size, train_step, model, opt_state, jax.random.key(0), x,
                         y, recipe=recipe, steps_per_epoch=1)  # fmt: skip


# The config key that sets each planned stage's batch size.
BATCH_KEYS = {
    "victim": "victim.recipe.batch_size",
    "covariance": "detection.factors.batch_size",
    "lambda": "detection.factors.batch_size",
    "scores": "detection.scores.batch_size",
}


def plan_run(config: RunConfig, n_train: int | None = None, stages: tuple[str, ...] | None = None) -> list[StagePlan]:
    """The streamed stages of ``config`` with XLA's per-step figures (``n_train``: the training-set size).

    ``stages`` (keys of :data:`BATCH_KEYS`) limits which steps are compiled; ``None``: all the
    run streams.
    """
    unknown = set(stages or ()) - set(BATCH_KEYS)
    if unknown:
        raise InputError(f"unknown stage(s) {sorted(unknown)} to plan; choose from {', '.join(BATCH_KEYS)}.")
    wanted = lambda name: stages is None or name in stages
    spec = get_spec(config.data.name)
    shape, classes = tuple(spec.image_shape), len(spec.class_names)
    model = _model(config, shape, classes)
    recipe, detection = config.victim.recipe, config.detection

    def steps(batch: int, passes: int = 1) -> int | None:
        return None if n_train is None else passes * math.ceil(n_train / batch)

    plan = []
    if wanted("victim"):
        plan.append(StagePlan(_train_cost(config, model, shape, recipe.batch_size), BATCH_KEYS["victim"],
                              steps(recipe.batch_size, recipe.epochs)))  # fmt: skip
    influence = tuple(name for name in ("covariance", "lambda", "scores") if wanted(name))
    if influence and any(m in NEEDS_FACTORS for m in detection.methods):
        queries = detection.test_points * (1 + detection.delta.n_b)
        costs = influence_stage_costs(model, shape, np.float32, factor_config=detection.factors,
                                      score_config=detection.scores, queries=queries, stages=influence)  # fmt: skip
        batch = {"covariance": detection.factors.batch_size, "lambda": detection.factors.batch_size,
                 "scores": detection.scores.batch_size}  # fmt: skip
        plan += [StagePlan(costs[name], BATCH_KEYS[name], steps(batch[name])) for name in influence]
    return plan


def _stage_name(stage: StagePlan) -> str:
    """The :data:`BATCH_KEYS` name of a planned stage."""
    return next(name for name in BATCH_KEYS if stage.cost.stage.startswith(name))


def host_memory_bytes() -> int:
    """Physical memory of this machine (the budget of a CPU run)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def training_set_size(config: RunConfig) -> int | None:
    """How many images the run trains on (after the validation split), if its dataset is at hand."""
    from jaxpoison.experiments.victim import load_data

    try:
        return len(load_data(config.data, config.seed).train)
    except InputError:  # the dataset is not on this machine: per-step figures only
        return None


def check_plan_fits(config: RunConfig, budget_bytes: int, plan: list[StagePlan] | None = None) -> list[StagePlan]:
    """Refuse ``config`` before it starts if a stage's step needs more than ``budget_bytes``.

    Raises:
      ConfigError: naming the stage, its batch-size key, what it needs and the largest
        batch size that fits.
    """
    plan = plan_run(config) if plan is None else plan
    for stage in plan:
        if stage.cost.peak_bytes <= budget_bytes:
            continue
        fits = _largest_fitting(config, stage, budget_bytes)
        raise ConfigError(
            f"the {stage.cost.stage} step at {stage.batch_key}={stage.cost.batch_size} needs "
            f"{stage.cost.peak_bytes / 2**20:,.0f} MiB, above the {budget_bytes / 2**20:,.0f} MiB budget; "
            + (f"set {stage.batch_key}={fits} (the largest batch that fits)." if fits else "no batch size fits.")
        )
    return plan


def _largest_fitting(config: RunConfig, stage: StagePlan, budget_bytes: int) -> int | None:
    """The largest batch of ``stage`` within the budget, or ``None`` if none fits."""

    def cost_at(batch: int) -> StageCost:  # compiles only this stage's step
        changed = apply_overrides(config, [f"{stage.batch_key}={batch}"])
        return plan_run(changed, stages=(_stage_name(stage),))[0].cost

    try:
        return largest_batch_within(cost_at, budget_bytes, multiple=8, limit=stage.cost.batch_size)
    except InputError:  # not even the smallest batch fits
        return None


def fit_batches(config: RunConfig, budget_bytes: int,
                plan: list[StagePlan] | None = None) -> tuple[RunConfig, list[str]]:  # fmt: skip
    """``config`` with every batch size too large for ``budget_bytes`` lowered to the largest that fits.

    Stages that share a key (the two factor passes) get the smaller of their choices. Sizes
    that already fit are kept: a smaller batch never speeds a pass up.

    Returns:
      The fitted config and the overrides applied (``"key=value"``), empty when all fit.

    Raises:
      ConfigError: a stage does not fit at any batch size.
    """
    plan = plan_run(config) if plan is None else plan
    chosen: dict[str, int] = {}
    for stage in plan:
        if stage.cost.peak_bytes <= budget_bytes:
            continue
        fits = _largest_fitting(config, stage, budget_bytes)
        if fits is None:
            raise ConfigError(f"the {stage.cost.stage} step does not fit the {budget_bytes / 2**20:,.0f} MiB budget "
                              "at any batch size; lower the queries or the model size.")  # fmt: skip
        chosen[stage.batch_key] = min(fits, chosen.get(stage.batch_key, fits))
    overrides = [f"{key}={value}" for key, value in chosen.items()]
    return (apply_overrides(config, overrides) if overrides else config), overrides


def format_plan(plan: list[StagePlan], budget_bytes: int | None = None) -> str:
    """A Markdown table of the plan."""
    fits = " fits |" if budget_bytes else ""
    lines = ["| stage | batch | GFLOP / step | MiB / step | steps | TFLOP in all |" + fits,
             "|---|---:|---:|---:|---:|---:|" + ("---|" if budget_bytes else "")]  # fmt: skip
    for s in plan:
        total = "?" if s.total_flops is None else f"{s.total_flops / 1e12:.2f}"
        row = (f"| {s.cost.stage} | {s.cost.batch_size} | {s.cost.flops / 1e9:.2f} | {s.cost.peak_bytes / 2**20:,.0f} "
               f"| {'?' if s.steps is None else s.steps} | {total} |")  # fmt: skip
        if budget_bytes:
            row += " yes |" if s.cost.peak_bytes <= budget_bytes else " **no** |"
        lines.append(row)
    return "\n".join(lines)
