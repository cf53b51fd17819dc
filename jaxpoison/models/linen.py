"""Flax Linen models at jaxpoison's boundary.

Most published JAX vision code is Linen: a module plus a ``variables`` dict
(``{"params": ..., "batch_stats": ...}``). :func:`from_linen` turns the pair into the same
pure :class:`~jaxpoison.models.FunctionalModel` an NNX model becomes, so training,
evaluation, influence, detection and unlearning take it unchanged. Its static structure is
a :class:`LinenStructure`; K-FAC/EK-FAC capture finds and taps its ``nn.Dense``,
``nn.DenseGeneral`` (one input and one output axis) and ``nn.Conv`` layers through Linen's
own method interception (:func:`flax.linen.intercept_methods`), so no traced graph is parsed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxpoison.errors import InputError
from jaxpoison.models.functional import FunctionalModel


@dataclasses.dataclass(frozen=True)
class LinenStructure:
    """The static half of a Linen model: the module, an input shape to trace it with, and call options.

    Attributes:
      module: the Linen module (hashable; compared by its fields).
      input_shape: one example's shape, e.g. ``(28, 28, 1)``: layer discovery traces one call.
      eval_kwargs / train_kwargs: extra keyword arguments of ``__call__`` in inference and
        training mode, as sorted ``(name, value)`` pairs (e.g. ``(("train", False),)``).
      input_dtype: the inputs' dtype for that trace (``None``: the parameters' float dtype;
        ``"int32"`` for token ids).
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    eval_kwargs: tuple[tuple[str, Any], ...] = ()
    train_kwargs: tuple[tuple[str, Any], ...] = ()
    input_dtype: str | None = None

    def variables(self, params, state) -> dict:
        return {"params": params, **state}

    def apply(self, params, state, x):
        return self.module.apply(self.variables(params, state), x, **dict(self.eval_kwargs))

    def features(self, params, state, x):
        if not hasattr(self.module, "features"):
            raise InputError(f"{type(self.module).__name__} has no `features` method; add one returning the "
                             "penultimate activations to use feature-based detectors.")  # fmt: skip
        return self.module.apply(self.variables(params, state), x, method="features", **dict(self.eval_kwargs))

    def train_apply(self, params, state, x):
        training = dict(self.train_kwargs)
        if not state:
            return self.module.apply({"params": params}, x, **training), state
        logits, updates = self.module.apply(self.variables(params, state), x, mutable=list(state), **training)
        return logits, {**state, **updates}


def from_linen(
    module: nn.Module,
    variables: dict,
    input_shape: tuple[int, ...],
    *,
    eval_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    input_dtype: str | None = None,
    mean=None,
    std=None,
) -> FunctionalModel:
    """A Linen ``module`` and its ``variables`` as a :class:`FunctionalModel`.

    Args:
      module: a Linen classifier, ``module.apply(variables, x) -> logits`` on a normalised
        batch ``[N, *input_shape]``.
      variables: what ``module.init`` returned: ``"params"`` is what training and influence
        differentiate; every other collection (``"batch_stats"``, …) is frozen state that
        training mode updates.
      input_shape: one example's shape (no batch axis).
      eval_kwargs: extra ``__call__`` arguments for inference, e.g. ``{"train": False}`` for a
        BatchNorm model.
      train_kwargs: extra ``__call__`` arguments for training, e.g. ``{"train": True}``.
      input_dtype: the dtype of the inputs when it is not the parameters' (``"int32"`` for
        token ids).
      mean: per-channel input mean, subtracted at the model's door (``None``: the module sees
        its inputs as given).
      std: per-channel input standard deviation, divided at the model's door.

    ``features`` calls the module's ``features`` method when it has one (what spectral
    signatures and activation clustering read); without it those detectors refuse the model.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import linen as nn
      >>> module = nn.Dense(3)
      >>> model = from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, 4))), (4,))
      >>> model(jnp.ones((2, 4))).shape
      (2, 3)
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"from_linen takes a flax.linen Module; got {type(module).__name__}.")
    if not isinstance(variables, dict) or "params" not in variables:
        raise InputError("variables must be the dict module.init returns, with a 'params' collection.")
    structure = LinenStructure(module, tuple(int(d) for d in input_shape), tuple(sorted((eval_kwargs or {}).items())),
                               tuple(sorted((train_kwargs or {}).items())),
                               None if input_dtype is None else jnp.dtype(input_dtype).name)  # fmt: skip
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    return FunctionalModel(params, state, structure).with_normalization(mean, std)


def trace_calls(structure: LinenStructure, params, state, interceptor) -> jax.ShapeDtypeStruct:
    """Trace one abstract call of the model with ``interceptor`` active (layer discovery)."""
    leaves = jax.tree.leaves(params)
    dtype = structure.input_dtype or (jnp.result_type(leaves[0]) if leaves else jnp.float32)
    x = jax.ShapeDtypeStruct((1, *structure.input_shape), dtype)
    evaluate = dict(structure.eval_kwargs)

    def call(params, state, x):
        with nn.intercept_methods(interceptor):
            return structure.module.apply(structure.variables(params, state), x, **evaluate)

    return jax.eval_shape(call, params, state, x)
