"""Layer capture for Flax Linen models, through Linen's method interception.

The same contract as the NNX capture in :mod:`jaxpoison.influence.capture`: find the
``Dense``/``Conv`` layers and the parameters none of them covers, and build
``f(params, state, x, probes) -> (logits, inputs, outputs)`` in which every tracked layer
records its input and adds a zero probe to its output. Here an interceptor installed with
:func:`flax.linen.intercept_methods` sees each submodule's ``__call__``, so no traced
graph is parsed and the user's module is never modified.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import linen as nn

from jaxpoison.errors import InputError
from jaxpoison.influence.capture import Layer, param_paths
from jaxpoison.models.linen import LinenStructure, trace_calls

_DENSE = (nn.Dense, nn.DenseGeneral)


def _name(path) -> str:
    return ".".join(str(k) for k in path)


def _node(params, path):
    for key in path:
        params = params[key]
    return params


def _describe(module: nn.Module, params) -> Layer | None:
    """The tracked-layer record of a Dense/Conv module, or ``None`` for a layer capture cannot factor."""
    path = tuple(module.path)
    try:
        node = _node(params, path)
    except (KeyError, TypeError):
        return None
    if not isinstance(node, dict) or "kernel" not in node:
        return None
    shape = tuple(node["kernel"].shape)
    has_bias = "bias" in node
    if type(module) in _DENSE:
        if len(shape) != 2:  # DenseGeneral over several input or output axes: not a Kronecker pair
            return None
        return Layer(_name(path), path, "dense", shape, has_bias)
    if type(module) is nn.Conv:
        size = module.kernel_size if isinstance(module.kernel_size, tuple | list) else (module.kernel_size,) * 2
        padding = module.padding
        if len(size) != 2 or module.feature_group_count != 1 or (isinstance(padding, str)
                                                                 and padding not in ("SAME", "VALID")):  # fmt: skip
            return None
        one = lambda v: 1 if v is None else v  # Linen's default for an unset stride or dilation
        conv = (tuple(size), one(module.strides), padding, one(module.input_dilation), one(module.kernel_dilation))
        return Layer(_name(path), path, "conv", shape, has_bias, conv)
    return None


def find_linen_layers(structure: LinenStructure, params, state) -> tuple[list[Layer], list[str]]:
    """The tracked layers of a Linen model (in call order) and the parameters none of them covers.

    A layer called more than once (shared weights) has no single input per example, so it is
    left untracked and its parameters are listed with the rest.
    """
    calls: dict[str, int] = {}
    found: dict[str, Layer] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (*_DENSE, nn.Conv)):
            layer = _describe(module, params)
            if layer is not None:
                calls[layer.name] = calls.get(layer.name, 0) + 1
                found.setdefault(layer.name, layer)
        return next_fun(*args, **kwargs)

    trace_calls(structure, params, state, interceptor)
    layers = [layer for name, layer in found.items() if calls[name] == 1]
    covered = {(*layer.path, "kernel") for layer in layers} | {(*layer.path, "bias") for layer in layers
                                                               if layer.has_bias}  # fmt: skip
    untracked = [_name(p) for p in param_paths(params) if tuple(p) not in covered]
    return layers, untracked


def tapped_linen_apply(structure: LinenStructure, layers: list[Layer]) -> Callable:
    """``f(params, state, x, probes) -> (logits, inputs, outputs)`` with every tracked Linen layer tapped."""
    tracked = {layer.name for layer in layers}
    evaluate = dict(structure.eval_kwargs)

    def f(params, state, x, probes):
        inputs, outputs = {}, {}

        def interceptor(next_fun, args, kwargs, context):
            name = _name(context.module.path)
            if context.method_name != "__call__" or name not in tracked:
                return next_fun(*args, **kwargs)
            if name in inputs:
                raise InputError(f"layer {name} is called more than once; shared layers cannot be tracked.")
            y = next_fun(*args, **kwargs)
            inputs[name], outputs[name] = args[0], y
            return y if probes is None else y + probes[name]

        with nn.intercept_methods(interceptor):
            logits = structure.module.apply(structure.variables(params, state), x, **evaluate)
        return logits, inputs, outputs

    return f
