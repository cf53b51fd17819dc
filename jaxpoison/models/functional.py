"""The boundary between Flax NNX modules and jaxpoison's pure functions.

Every algorithm in jaxpoison sees a model as ``apply(params, state, x) -> logits``
plus two pytrees: ``params`` (what training and influence differentiate) and
``state`` (frozen extras such as BatchNorm running statistics). The split happens
once, here; nothing downstream touches NNX objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison.errors import InputError

PyTree = Any


class FunctionalModel(NamedTuple):
    """A model as pure functions over pytrees.

    Attributes:
      apply: ``apply(params, state, x) -> logits`` in inference mode (BatchNorm uses
        its running statistics). ``x`` is a normalised batch ``[N, H, W, C]``.
      features: ``features(params, state, x) -> [N, D]``, the penultimate features.
      train_apply: ``train_apply(params, state, x) -> (logits, new_state)`` in training
        mode (BatchNorm uses batch statistics and returns updated running averages).
      params: the trainable parameters (``nnx.Param`` leaves).
      state: everything else (``nnx.BatchStat`` leaves; an empty state for BN-free models).
      graphdef: the static structure of the inference-mode model, for tools that need to
        look inside it (layer capture for K-FAC/EK-FAC).
    """

    apply: Callable[[PyTree, PyTree, jax.Array], jax.Array]
    features: Callable[[PyTree, PyTree, jax.Array], jax.Array]
    train_apply: Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, PyTree]]
    params: PyTree
    state: PyTree
    graphdef: Any = None

    def bind(self, state: PyTree | None = None) -> Callable[[PyTree, jax.Array], jax.Array]:
        """``apply(params, x)`` with the state frozen (the form influence functions use)."""
        frozen = self.state if state is None else state
        return lambda params, x: self.apply(params, frozen, x)


def to_functional(model: nnx.Module) -> FunctionalModel:
    """Split an NNX model into pure ``apply``/``features``/``train_apply`` and its pytrees.

    The model object is not modified. The returned functions close over static
    graph definitions only, so they can be jitted, vmapped and differentiated freely.
    """
    eval_model = nnx.view(model, use_running_average=True, raise_if_not_found=False)
    train_model = nnx.view(model, use_running_average=False, raise_if_not_found=False)
    eval_graph, params, state = nnx.split(eval_model, nnx.Param, ...)
    train_graph = nnx.split(train_model, nnx.Param, ...)[0]

    # copy=True: merge must not alias the caller's Variables, or a BatchNorm update in
    # training mode would silently rewrite the `state` the caller passed in.
    def apply(params, state, x):
        return nnx.merge(eval_graph, params, state, copy=True)(x)

    def features(params, state, x):
        return nnx.merge(eval_graph, params, state, copy=True).features(x)

    def train_apply(params, state, x):
        module = nnx.merge(train_graph, params, state, copy=True)
        logits = module(x)
        return logits, nnx.state(module, nnx.Not(nnx.Param))

    return FunctionalModel(apply, features, train_apply, params, state, eval_graph)


def count_params(params: PyTree) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def output_layer(model: FunctionalModel, image_shape: tuple[int, ...]) -> str:
    """Name of the top-level parameter group that maps the penultimate features to the logits.

    Found by shape — the group holding a ``[feature_dim, num_classes]`` kernel (or an Equinox
    ``[num_classes, feature_dim]`` weight) — so it works for every architecture that exposes
    ``features`` (all of :mod:`jaxpoison.models`).

    Raises:
      ValueError: no group, or more than one, has that shape.
    """
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    width = jax.eval_shape(model.features, model.params, model.state, x).shape[-1]
    classes = jax.eval_shape(model.apply, model.params, model.state, x).shape[-1]
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

    return model._replace(params=jax.tree_util.tree_map_with_path(pick, model.params, source.params))
