"""Layer capture for Equinox models, by tree surgery.

The same contract as the NNX capture in :mod:`jaxpoison.influence.capture`: find the
``Linear``/``Conv2d`` layers and the parameters none of them covers, and build
``f(params, state, x, probes) -> (logits, inputs, outputs)`` in which every tracked layer
records its input and adds a zero probe to its output. Here each tracked layer of a private
copy of the module is swapped for a small tapping module that wraps it. The model takes one
example at a time, so the per-example function returns what the taps recorded and
:func:`jax.vmap` batches it like the logits: no tracer outlives the trace it belongs to.

Tracked layers have the ``"oi"`` layout (weights ``[out, in]`` and OIHW, channel-first
activations); :func:`~jaxpoison.influence.capture.capture` and
:func:`~jaxpoison.influence.capture.layer_gradient` bring them to jaxpoison's convention.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

import equinox as eqx
import jax

from jaxpoison.errors import InputError
from jaxpoison.influence.capture import Layer, param_paths
from jaxpoison.models.equinox import EquinoxStructure, key_path

# Exact types only: a subclass may change __call__ in ways the Kronecker factors do not model.
_TRACKED = (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.Conv2d)

_ACTIVE_TAP: contextvars.ContextVar = contextvars.ContextVar("jaxpoison_equinox_tap", default=None)


def _name(path) -> str:
    return ".".join(path)


def _describe(module, path: tuple[str, ...]) -> Layer | None:
    """The tracked-layer record of a Linear/Conv module, or ``None`` for a layer capture cannot factor."""
    has_bias = module.bias is not None
    if type(module) is eqx.nn.Linear:
        if module.in_features == "scalar" or module.out_features == "scalar":
            return None  # no feature axis to factor over
        return Layer(_name(path), path, "dense", tuple(module.weight.shape), has_bias, None, "weight", "bias", "oi")
    padding = module.padding
    if (module.num_spatial_dims != 2 or module.groups != 1 or module.padding_mode != "ZEROS"
            or (isinstance(padding, str) and padding not in ("SAME", "SAME_LOWER", "VALID"))):  # fmt: skip
        return None  # 1-D/3-D, grouped or non-zero-padded convolutions: reported as untracked
    conv = (tuple(module.kernel_size), tuple(module.stride), padding, 1, tuple(module.dilation))
    return Layer(_name(path), path, "conv", tuple(module.weight.shape), has_bias, conv, "weight", "bias", "oi")


def _candidates(module) -> list[tuple[str, Layer]]:
    """Every Linear/Conv layer capture could factor, in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(module, is_leaf=lambda node: type(node) in _TRACKED)[0]
    found = []
    for path, node in flat:
        if type(node) in _TRACKED:
            layer = _describe(node, key_path(path))
            if layer is not None:
                found.append((layer.name, layer))
    return found


class _Tapped(eqx.Module):
    """Stands in for a tracked layer: calls it through the active tap."""

    layer: eqx.Module
    name: str = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        return _ACTIVE_TAP.get()(self, x, key)


class _Tap:
    """Records one example's layer inputs and outputs and adds the probes (inside the per-example trace)."""

    def __init__(self, probes: dict | None, strict: bool):
        self.probes, self.strict = probes, strict
        self.inputs: dict = {}
        self.outputs: dict = {}
        self.order: list[str] = []

    def __call__(self, tapped: _Tapped, x, key):
        name = tapped.name
        self.order.append(name)
        y = tapped.layer(x, key=key)
        if name in self.inputs:
            if self.strict:
                raise InputError(f"layer {name} is called more than once; shared layers cannot be tracked.")
            return y  # layer discovery: counted, and left untracked
        self.inputs[name], self.outputs[name] = x, y
        return y if self.probes is None else y + self.probes[name]


def _tap_module(module, names: set[str]):
    """A copy of ``module`` whose layers at ``names`` are wrapped in :class:`_Tapped`."""
    is_layer = lambda node: type(node) in _TRACKED
    flat, treedef = jax.tree_util.tree_flatten_with_path(module, is_leaf=is_layer)
    leaves = []
    for path, node in flat:
        name = _name(key_path(path))
        leaves.append(_Tapped(node, name) if is_layer(node) and name in names else node)
    return jax.tree.unflatten(treedef, leaves)


def _tapped(structure: EquinoxStructure, names: set[str], strict: bool, record: list | None = None) -> Callable:
    def f(params, state, x, probes):
        module = _tap_module(structure.module(params), names)

        def one(example, probe):
            tap = _Tap(probe, strict)
            token = _ACTIVE_TAP.set(tap)
            try:
                logits = module(structure.example(example))
            finally:
                _ACTIVE_TAP.reset(token)
            if record is not None:
                record.append(tap.order)
            return logits, tap.inputs, tap.outputs

        return jax.vmap(one)(structure.batch(x, params), probes)

    return f


def _call_order(structure: EquinoxStructure, params, names: set[str]) -> list[str] | None:
    """The tapped layers' calls in one abstract run, or ``None`` when tapping them breaks the model."""
    record: list = []
    x = jax.ShapeDtypeStruct((1, *structure.input_shape), structure.dtype(params))
    try:
        jax.eval_shape(_tapped(structure, names, strict=False, record=record), params, {}, x, None)
    except Exception:  # the untapped model runs (checked first), so the taps are what broke it
        return None
    return record[0] if record else []


def find_equinox_layers(structure: EquinoxStructure, params, state) -> tuple[list[Layer], list[str]]:
    """The tracked layers of an Equinox model (in call order) and the parameters none of them covers.

    A layer called more than once (shared weights), or one the model does not simply call on a
    single example's activations (reads of its weights elsewhere, calls inside an inner
    ``jax.vmap`` or ``lax.scan``), has no single input per example: it is left untracked and
    its parameters are listed with the rest.
    """
    x = jax.ShapeDtypeStruct((1, *structure.input_shape), structure.dtype(params))
    try:
        jax.eval_shape(lambda p, x: jax.vmap(lambda one: structure.module(p)(structure.example(one)))(x), params, x)
    except (TypeError, ValueError, IndexError) as e:
        raise InputError(f"the Equinox model cannot take one {structure.input_shape} example "
                         f"(channels_first={structure.channels_first}): {e}") from e  # fmt: skip
    candidates = dict(_candidates(structure.module(params)))
    order = _call_order(structure, params, set(candidates))
    if order is None:  # find which taps break the model, one layer at a time (tree order stands in for call order)
        order = [call for name in candidates for call in _call_order(structure, params, {name}) or []]
    layers = [candidates[name] for name in dict.fromkeys(order) if order.count(name) == 1]
    covered = {(*layer.path, layer.kernel_key) for layer in layers}
    covered |= {(*layer.path, layer.bias_key) for layer in layers if layer.has_bias}
    untracked = [_name(p) for p in param_paths(params) if tuple(p) not in covered]
    return layers, untracked


def tapped_equinox_apply(structure: EquinoxStructure, layers: list[Layer]) -> Callable:
    """``f(params, state, x, probes) -> (logits, inputs, outputs)`` with every tracked Equinox layer tapped."""
    return _tapped(structure, {layer.name for layer in layers}, strict=True)
