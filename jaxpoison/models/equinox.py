"""Equinox models at jaxpoison's boundary.

An Equinox model is a pytree whose floating-point arrays are its parameters, and it takes
one example at a time. :func:`from_equinox` turns it into the same pure
:class:`~jaxpoison.models.FunctionalModel` an NNX or Linen model becomes, so training,
evaluation, influence, detection and unlearning take it unchanged:

* ``apply`` maps the module over the batch with :func:`jax.vmap`;
* ``params`` is a plain nested dict keyed by the module's path: an attribute by its name,
  a list or tuple entry by its position as a string, a dict entry by its key as a string.
  A model with ``self.conv1 = eqx.nn.Conv2d(...)`` and ``self.mlp = eqx.nn.MLP(...)`` has
  ``params["conv1"]["weight"]``, ``params["conv1"]["bias"]`` and
  ``params["mlp"]["layers"]["0"]["weight"]``;
* its static structure is an :class:`EquinoxStructure`; K-FAC/EK-FAC capture finds and taps
  its ``eqx.nn.Linear`` and 2-D ``eqx.nn.Conv`` layers by tree surgery
  (:mod:`jaxpoison.influence.equinox_capture`), so no traced graph is parsed.

Images stay NHWC everywhere in jaxpoison; ``channels_first=True`` hands each example to the
model as CHW, the layout ``eqx.nn.Conv2d`` expects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

try:
    import equinox as eqx
except ImportError as e:  # an optional extra; the rest of jaxpoison works without it
    raise ImportError("Equinox models need equinox: pip install 'jaxpoison[equinox]'.") from e

from jaxpoison.errors import InputError
from jaxpoison.models.functional import FunctionalModel


def _key(entry) -> str:
    """One step of a pytree key path as a params-dict key."""
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return str(entry.key)
    return str(entry)


def key_path(path) -> tuple[str, ...]:
    """A pytree key path (from :func:`jax.tree_util.tree_flatten_with_path`) as params-dict keys."""
    return tuple(_key(entry) for entry in path)


def _get(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


@dataclasses.dataclass(frozen=True)
class EquinoxStructure:
    """The static half of an Equinox model: enough to rebuild the module from a params dict.

    Hashable (it is a static argument of jitted functions) and compared by value.

    Attributes:
      treedef: the pytree structure of the (inference-mode) module.
      leaves: its leaves in order, ``None`` where a parameter goes (``None`` is never a pytree leaf).
      paths: the parameters' key paths into the params dict, in leaf order.
      input_shape: one example's shape as jaxpoison stores it (images: ``(H, W, C)``).
      input_dtype: the inputs' dtype when it is not the parameters' (``"int32"`` for token ids).
      channels_first: whether each example's last (channel) axis is moved first before the model sees it.
    """

    treedef: Any
    leaves: tuple
    paths: tuple[tuple[str, ...], ...]
    input_shape: tuple[int, ...]
    input_dtype: str | None = None
    channels_first: bool = False

    def module(self, params: dict):
        """The module with ``params`` (a nested dict laid out like ``paths``) put in place."""
        values = iter([_get(params, path) for path in self.paths])
        return jax.tree.unflatten(self.treedef, [next(values) if leaf is None else leaf for leaf in self.leaves])

    def example(self, x: jax.Array) -> jax.Array:
        """One jaxpoison example as the module expects it."""
        return jnp.moveaxis(x, -1, 0) if self.channels_first else x

    def dtype(self, params: dict):
        """The inputs' dtype: ``input_dtype``, else the parameters' float dtype."""
        leaves = jax.tree.leaves(params)
        return jnp.dtype(self.input_dtype or (jnp.result_type(*leaves) if leaves else jnp.float32))

    def batch(self, x: jax.Array, params: dict) -> jax.Array:
        """A floating-point batch in the inputs' dtype (Equinox's convolutions refuse mixed dtypes)."""
        dtype = self.dtype(params)
        if jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(dtype, jnp.floating):
            return x.astype(dtype)
        return x

    def apply(self, params, state, x):
        net = self.module(params)
        return jax.vmap(lambda one: net(self.example(one)))(self.batch(x, params))

    def features(self, params, state, x):
        net = self.module(params)
        if not hasattr(net, "features"):
            raise InputError(f"{type(net).__name__} has no `features` method; add one taking one example and "
                             "returning its penultimate activations [D] to use feature-based detectors.")  # fmt: skip
        return jax.vmap(lambda one: net.features(self.example(one)))(self.batch(x, params))

    def train_apply(self, params, state, x):
        return self.apply(params, state, x), state


def _nest(paths: list[tuple[str, ...]], values: list) -> dict:
    """A nested dict holding ``values`` at ``paths`` (refusing paths that collide)."""
    root: dict = {}
    for path, value in zip(paths, values, strict=True):
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise InputError(f"parameter paths collide at {'.'.join(path)}; use distinct attribute/dict keys.")
        if not path or path[-1] in node:
            raise InputError(f"parameter paths collide at {'.'.join(path) or '<root>'}; the model must be a module "
                             "whose parameters have distinct attribute/dict keys (e.g. not 0 and '0').")  # fmt: skip
        node[path[-1]] = value
    return root


def from_equinox(
    model,
    input_shape: tuple[int, ...],
    *,
    input_dtype: str | None = None,
    channels_first: bool = False,
    mean=None,
    std=None,
) -> FunctionalModel:
    """An Equinox ``model`` as a :class:`FunctionalModel`.

    Args:
      model: an ``eqx.Module`` classifier taking one example, ``model(x) -> logits [classes]``.
        Every floating-point array in it is a parameter (Equinox's ``eqx.is_inexact_array``);
        every other leaf is static.
      input_shape: one example's shape as jaxpoison stores it (no batch axis; images ``(H, W, C)``).
      input_dtype: the dtype of the inputs when it is not the parameters' (``"int32"`` for token ids).
      channels_first: move each example's last axis first before calling the model (``HWC -> CHW``
        for images), for models built from ``eqx.nn.Conv2d``. Batches are NHWC either way.
      mean, std: per-channel input normalisation, applied at the model's door (``None``: the
        model sees its inputs as given).

    ``features`` calls the module's ``features`` method (one example in, ``[D]`` out) when it has
    one, which spectral signatures and activation clustering read; without it those detectors
    refuse the model. ``state`` is ``{}``. Floating-point batches are cast to the parameters'
    dtype before the model sees them, since Equinox's convolutions do not promote mixed dtypes.

    Not supported yet: stateful layers (``eqx.nn.BatchNorm``, ``eqx.nn.SpectralNorm``, anything
    holding an ``eqx.nn.StateIndex``) are refused with an :class:`~jaxpoison.errors.InputError`.
    jaxpoison has no random key to pass, so the model runs in ``eqx.nn.inference_mode`` for
    both evaluation and training (Dropout is off).

    Example:
      >>> import jax, equinox as eqx
      >>> model = from_equinox(eqx.nn.Linear(4, 3, key=jax.random.key(0)), (4,))
      >>> sorted(model.params)
      ['bias', 'weight']
      >>> model(jax.numpy.ones((2, 4))).shape
      (2, 3)
    """
    if not isinstance(model, eqx.Module):
        raise InputError(f"from_equinox takes an equinox.Module; got {type(model).__name__}.")
    is_index = lambda node: isinstance(node, eqx.nn.StateIndex)
    if any(is_index(node) for node in jax.tree.leaves(model, is_leaf=is_index)):
        raise InputError(f"{type(model).__name__} holds stateful layers (eqx.nn.BatchNorm, eqx.nn.SpectralNorm or "
                         "another eqx.nn.StateIndex); from_equinox does not support them yet. Use a stateless "
                         "normalisation such as eqx.nn.LayerNorm or eqx.nn.GroupNorm.")  # fmt: skip
    module = eqx.nn.inference_mode(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(module)
    paths, values, leaves = [], [], []
    for path, leaf in flat:
        if eqx.is_inexact_array(leaf):
            paths.append(key_path(path))
            values.append(jnp.asarray(leaf))
            leaves.append(None)
        else:
            leaves.append(leaf)
    params = _nest(paths, values)
    structure = EquinoxStructure(treedef, tuple(leaves), tuple(paths), tuple(int(d) for d in input_shape),
                                 None if input_dtype is None else jnp.dtype(input_dtype).name,
                                 bool(channels_first))  # fmt: skip
    try:
        hash(structure)
    except TypeError as e:
        message = (f"{type(model).__name__} has unhashable non-parameter leaves ({e}): integer or boolean arrays, "
                   "or containers in static fields. Store such constants as Python values, or as floating-point "
                   "arrays wrapped in jax.lax.stop_gradient where they are used.")  # fmt: skip
        raise InputError(message) from e

    return FunctionalModel(params, {}, structure).with_normalization(mean, std)
