"""The model at jaxpoison's boundary: a pytree of parameters and state, with its structure static.

Every algorithm in jaxpoison sees one kind of model, a :class:`FunctionalModel`:

* its **children** are ``params`` (what training and influence differentiate) and ``state``
  (frozen extras such as BatchNorm running statistics);
* its **static metadata** is the ``structure`` that knows how to run those pytrees (an
  :class:`NNXStructure`, a Linen or an Equinox structure) and the input ``normalization``.

Because it is a pytree it crosses ``jit``, ``vmap`` and ``grad`` like any other argument, and
two models of the same architecture share compiled programs (the structure is compared by
value). Every layer calls it the same way, ``f(model, batch, ...)``, and the model normalises
its own pixel-space inputs: ``model(x)`` are the logits of raw images ``x``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison.errors import InputError

PyTree = Any


class Structure(Protocol):
    """The static half of a model: runs ``params``/``state`` on a *normalised* batch.

    Implementations are hashable and compared by value (they are part of the model's treedef).
    """

    def apply(self, params: PyTree, state: PyTree, x: jax.Array) -> jax.Array:
        """Logits in inference mode."""

    def features(self, params: PyTree, state: PyTree, x: jax.Array) -> jax.Array:
        """Penultimate features ``[N, D]``."""

    def train_apply(self, params: PyTree, state: PyTree, x: jax.Array) -> tuple[jax.Array, PyTree]:
        """Logits in training mode and the updated state."""


class Normalization(NamedTuple):
    """Per-channel input normalisation ``(x - mean) / std``, broadcast over the last axis.

    Held as Python floats: it is static metadata of the model, hashable and exact.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, mean, std) -> Normalization:
        """From array-likes; refuses non-finite values and a zero or negative std."""
        m = tuple(float(v) for v in np.atleast_1d(np.asarray(mean, np.float64)).ravel())
        s = tuple(float(v) for v in np.atleast_1d(np.asarray(std, np.float64)).ravel())
        if len(m) != len(s):
            raise InputError(f"normalisation mean and std differ in length ({len(m)} vs {len(s)}).")
        if not all(np.isfinite(m)) or not all(np.isfinite(s)) or min(s) <= 0:
            raise InputError(f"normalisation needs finite means and positive stds; got mean={m}, std={s}.")
        return cls(m, s)

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1,) * (x.ndim - 1) + (-1,)  # per channel: the last axis, broadcast explicitly
        return (x - jnp.asarray(self.mean, x.dtype).reshape(shape)) / jnp.asarray(self.std, x.dtype).reshape(shape)


@dataclasses.dataclass(frozen=True)
class NNXStructure:
    """The static half of a Flax NNX model: its graph definitions in inference and training mode."""

    graphdef: Any
    train_graphdef: Any

    # copy=True: merge must not alias the caller's Variables, or a BatchNorm update in
    # training mode would silently rewrite the state the caller passed in.
    def apply(self, params, state, x):
        return nnx.merge(self.graphdef, params, state, copy=True)(x)

    def features(self, params, state, x):
        module = nnx.merge(self.graphdef, params, state, copy=True)
        if not hasattr(module, "features"):
            raise InputError(f"{type(module).__name__} has no `features` method; add one returning the penultimate "
                             "activations to use feature-based detectors.")  # fmt: skip
        return module.features(x)

    def train_apply(self, params, state, x):
        module = nnx.merge(self.train_graphdef, params, state, copy=True)
        logits = module(x)
        return logits, nnx.state(module, nnx.Not(nnx.Param))


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
    """A model as a pytree.

    Attributes:
      params: the trainable parameters (a child: differentiated, sharded, checkpointed).
      state: everything else the model carries (a child; an empty state for BN-free models).
      structure: how to run them (static; see :class:`Structure`).
      normalization: the input normalisation applied at the model's door (static; ``None``:
        the inputs are used as given, e.g. token ids or already-normalised features).

    Calling conventions (``x`` in pixel space, ``[N, ...]``):

    * ``model(x)`` — logits in inference mode;
    * ``model.features(x)`` — penultimate features;
    * ``model.train_logits(x)`` — ``(logits, new_state)`` in training mode;
    * ``model.replace(params=p)`` — the same model with other parameters (what gradients use:
      ``jax.grad(lambda p: loss(model.replace(params=p)(x)))``).
    """

    params: PyTree
    state: PyTree
    structure: Any = dataclasses.field(metadata={"static": True})
    normalization: Normalization | None = dataclasses.field(default=None, metadata={"static": True})

    def normalize(self, x: jax.Array) -> jax.Array:
        """``x`` as the network sees it: normalised floating-point inputs, anything else unchanged."""
        if self.normalization is None or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return x
        return self.normalization(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.structure.apply(self.params, self.state, self.normalize(x))

    logits = __call__

    def features(self, x: jax.Array) -> jax.Array:
        return self.structure.features(self.params, self.state, self.normalize(x))

    def train_logits(self, x: jax.Array) -> tuple[jax.Array, PyTree]:
        return self.structure.train_apply(self.params, self.state, self.normalize(x))

    def bind(self):
        """``f(params, x) -> logits`` with the state and normalisation fixed: the form that pure
        kernels (Hessian-vector products, per-example gradients) differentiate."""
        return lambda params, x: self.replace(params=params)(x)

    def replace(self, **changes) -> FunctionalModel:
        """A copy with some fields changed (``params``, ``state`` or ``normalization``)."""
        return dataclasses.replace(self, **changes)

    def with_normalization(self, mean, std) -> FunctionalModel:
        """This model normalising its inputs with ``mean``/``std`` (``None``, ``None``: no normalisation)."""
        return self.replace(normalization=None if mean is None else Normalization.of(mean, std))


jax.tree_util.register_dataclass(
    FunctionalModel, data_fields=["params", "state"], meta_fields=["structure", "normalization"]
)


def to_functional(model: nnx.Module, mean=None, std=None) -> FunctionalModel:
    """An NNX model as a :class:`FunctionalModel` (``mean``/``std``: its input normalisation).

    The module is not modified; the result holds its parameters and state and two static
    graph definitions, so it can be jitted, vmapped and differentiated freely.
    """
    if not isinstance(model, nnx.Module):
        raise InputError(f"to_functional takes a flax.nnx Module; got {type(model).__name__}.")
    eval_model = nnx.view(model, use_running_average=True, raise_if_not_found=False)
    train_model = nnx.view(model, use_running_average=False, raise_if_not_found=False)
    eval_graph, params, state = nnx.split(eval_model, nnx.Param, ...)
    train_graph = nnx.split(train_model, nnx.Param, ...)[0]
    return FunctionalModel(params, state, NNXStructure(eval_graph, train_graph)).with_normalization(mean, std)


def count_params(params: PyTree) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def output_layer(model: FunctionalModel, input_shape: tuple[int, ...], input_dtype=jnp.float32) -> str:
    """Name of the top-level parameter group that maps the penultimate features to the logits.

    Found by shape — the group holding a ``[feature_dim, num_classes]`` kernel (or an Equinox
    ``[num_classes, feature_dim]`` weight) — so it works for every architecture that exposes
    ``features`` (all of :mod:`jaxpoison.models`).

    Raises:
      InputError: no group, or more than one, has that shape.
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), input_dtype)
    width = jax.eval_shape(lambda m, x: m.features(x), model, x).shape[-1]
    classes = jax.eval_shape(lambda m, x: m(x), model, x).shape[-1]
    # [width, classes] for Flax kernels, [classes, width] for Equinox/PyTorch-style weights
    shapes = {(width, classes), (classes, width)}
    names = [name for name in model.params
             if any(leaf.shape in shapes for leaf in jax.tree.leaves(model.params[name]))]  # fmt: skip
    if len(names) != 1:
        raise InputError(f"expected one parameter group with a ({width}, {classes}) output kernel; found {names}.")
    return names[0]


def replace_layer(model: FunctionalModel, name: str, source: FunctionalModel) -> FunctionalModel:
    """``model`` with its top-level parameter group ``name`` taken from ``source`` (same architecture)."""
    if jax.tree.structure(model.params) != jax.tree.structure(source.params):
        raise InputError("replace_layer needs two models of the same architecture.")

    def pick(path, own, other):
        return other if path[0].key == name else own

    return model.replace(params=jax.tree_util.tree_map_with_path(pick, model.params, source.params))
