"""A compute and memory plan for the streamed influence passes, from XLA's analysis of each step.

Every streamed pass (covariance, Lambda, scoring) runs one compiled step per batch. Lowering
that step for abstract inputs of a batch size and compiling it, without running it, gives
XLA's own figures: floating-point operations, bytes accessed, and the buffers the step
needs (arguments, outputs, temporaries). :func:`influence_stage_costs` reports them per
stage, :func:`largest_batch_within` picks the largest batch whose step fits a memory budget
(the step's memory is affine in the batch size: two compiles fit the line, a third checks
the choice), and a run can refuse a batch size that would not fit before it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpoison.errors import InputError
from jaxpoison.influence import kfac, scores
from jaxpoison.influence.capture import Layer, find_layers
from jaxpoison.influence.kfac import FactorConfig
from jaxpoison.influence.scores import LowRankQuery, ScoreConfig
from jaxpoison.models import FunctionalModel

INFLUENCE_STAGES = ("covariance", "lambda", "scores")


class StageCost(NamedTuple):
    """XLA's figures for one compiled step of a streamed stage, at one batch size.

    Attributes:
      stage: the stage's name.
      batch_size: examples per step.
      flops: floating-point operations per step (XLA's cost analysis).
      bytes_accessed: bytes read and written per step.
      argument_bytes / output_bytes / temp_bytes / alias_bytes: the step's buffers (donated
        outputs alias their arguments and are counted once).
    """

    stage: str
    batch_size: int
    flops: float
    bytes_accessed: float
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int

    @property
    def peak_bytes(self) -> int:
        """The memory the step holds at once: its arguments, outputs and temporaries."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def compiled_cost(stage: str, batch_size: int, jitted: Callable, *args: Any, **static: Any) -> StageCost:
    """Lower and compile ``jitted(*args, **static)`` (arrays may be ``jax.ShapeDtypeStruct``) and read its costs."""
    compiled = jitted.lower(*args, **static).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else (cost or {})
    memory = compiled.memory_analysis()
    sizes = {name: int(getattr(memory, f"{name}_size_in_bytes", 0) or 0) if memory is not None else 0
             for name in ("argument", "output", "temp", "alias")}  # fmt: skip
    return StageCost(stage, batch_size, float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                     sizes["argument"], sizes["output"], sizes["temp"], sizes["alias"])  # fmt: skip


def _batch(batch_size: int, example_shape: tuple[int, ...], dtype) -> tuple[jax.ShapeDtypeStruct, ...]:
    return (jax.ShapeDtypeStruct((batch_size, *example_shape), dtype), jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            jax.ShapeDtypeStruct((batch_size,), jnp.bool_))  # fmt: skip


def _laid_out_queries(layers: list[Layer], queries: int, rank: int | None, dtype) -> dict[str, Any]:
    """Abstract preconditioned queries in the layout :func:`~jaxpoison.influence.pairwise_scores` streams against."""
    out = {}
    for layer in layers:
        i, o = layer.in_dim, layer.out_features
        if rank is not None:
            r = min(rank, i, o)
            out[layer.name] = LowRankQuery(jax.ShapeDtypeStruct((i, queries, r), dtype),
                                           jax.ShapeDtypeStruct((o, queries, r), dtype))  # fmt: skip
        else:
            shape = (i, queries, o) if layer.kind == "dense" else (queries, i, o)
            out[layer.name] = jax.ShapeDtypeStruct(shape, dtype)
    return out


def influence_stage_costs(
    model: FunctionalModel,
    example_shape: tuple[int, ...],
    example_dtype,
    *,
    factor_config: FactorConfig = FactorConfig(),
    score_config: ScoreConfig = ScoreConfig(),
    queries: int = 51,
    factor_batch_size: int | None = None,
    score_batch_size: int | None = None,
    stages: tuple[str, ...] = INFLUENCE_STAGES,
) -> dict[str, StageCost]:
    """The per-step costs of the covariance, Lambda and scoring passes (``queries`` queries).

    Batch sizes default to the configs'. Nothing is run: each step is compiled for abstract
    inputs of the model's real parameter shapes. ``stages`` names the passes to compile (a
    subset of :data:`INFLUENCE_STAGES`), so a batch-size search compiles only its own.
    """
    unknown = set(stages) - set(INFLUENCE_STAGES)
    if unknown:
        raise InputError(f"unknown influence stage(s) {sorted(unknown)}; choose from {', '.join(INFLUENCE_STAGES)}.")
    layers, _ = find_layers(model)
    if not layers:
        raise InputError("the model has no tracked Dense/Conv layer; there is no influence pass to plan.")
    dtype = jax.tree.leaves(model.params)[0].dtype
    fb = factor_config.batch_size if factor_batch_size is None else factor_batch_size
    sb = score_config.batch_size if score_batch_size is None else score_batch_size
    key = jax.random.key(0)
    static = {"layers": tuple(layers), "fisher": factor_config.fisher, "dtype": factor_config.dtype}
    square = lambda n: jax.ShapeDtypeStruct((n, n), dtype)
    covariance = {layer.name: {"a": square(layer.in_dim), "s": square(layer.out_features)} for layer in layers}
    rotations = {layer.name: (square(layer.in_dim), square(layer.out_features)) for layer in layers}
    lam = {layer.name: jax.ShapeDtypeStruct((layer.in_dim, layer.out_features), dtype) for layer in layers}
    laid_out = _laid_out_queries(layers, queries, score_config.query_rank, dtype)
    compile_stage = {
        "covariance": lambda: compiled_cost("covariance", fb, kfac._covariance_step, covariance, model, key,
                                            *_batch(fb, example_shape, example_dtype), **static),
        "lambda": lambda: compiled_cost("lambda", fb, kfac._lambda_step, lam, model, rotations, key,
                                        *_batch(fb, example_shape, example_dtype), **static),
        "scores": lambda: compiled_cost(f"scores ({queries} queries)", sb, scores._pairwise_batch, model, laid_out,
                                        *_batch(sb, example_shape, example_dtype), layers=tuple(layers),
                                        dtype=score_config.dtype),
    }  # fmt: skip
    return {name: compile_stage[name]() for name in INFLUENCE_STAGES if name in stages}


def largest_batch_within(cost_at: Callable[[int], StageCost], budget_bytes: int, *, multiple: int = 1,
                         probes: tuple[int, int] = (16, 64), limit: int = 1 << 16) -> int:  # fmt: skip
    """The largest batch size (a multiple of ``multiple``, at most ``limit``) whose step fits ``budget_bytes``.

    ``cost_at(b)`` compiles the step for batch ``b``. Its memory is affine in ``b``: the two
    ``probes`` fit the line, and the chosen size is compiled once more to check it (and
    stepped down until it fits).

    Raises:
      InputError: not even a batch of ``multiple`` examples fits.
    """
    small, large = (cost_at(max(multiple, p // multiple * multiple)) for p in probes)
    slope = max((large.peak_bytes - small.peak_bytes) / max(large.batch_size - small.batch_size, 1), 1.0)
    fixed = small.peak_bytes - slope * small.batch_size
    guess = int((budget_bytes - fixed) // slope) // multiple * multiple
    guess = min(guess, limit // multiple * multiple)
    while guess >= multiple:
        if cost_at(guess).peak_bytes <= budget_bytes:
            return guess
        guess = (guess * 3 // 4) // multiple * multiple
    raise InputError(f"even a batch of {multiple} needs {small.peak_bytes / 2**20:.0f} MiB or more, above the "
                     f"{budget_bytes / 2**20:.0f} MiB budget; lower the queries or the model size.")  # fmt: skip


def device_memory_bytes() -> int | None:
    """This process's first device's memory limit as its runtime reports it (GPU, TPU); ``None`` on CPU."""
    device = jax.local_devices()[0]  # in a multi-process run, only this process's devices report
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("bytes_limit")
