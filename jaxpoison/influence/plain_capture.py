"""Layer capture for plain ``apply(params, x)`` models, through their declared kernels.

The same contract as the NNX capture in :mod:`jaxpoison.influence.capture`: find the tracked
layers and the parameters none of them covers, and build ``f(params, state, x, probes) ->
(logits, inputs, outputs)`` in which every tracked layer records its input and adds a zero
probe to its output. The user declared which leaves are kernels
(:func:`~jaxpoison.models.from_apply`); each reaches ``apply`` as a
:class:`~jaxpoison.models.plain.TappedKernel`, which sees the layer's input at the point of
use (``x @ kernel`` or :func:`~jaxpoison.models.plain.conv`). No traced graph is parsed.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxpoison.errors import InputError
from jaxpoison.influence.capture import Layer, param_paths
from jaxpoison.models.plain import ApplyStructure, TappedKernel, leaf, trace_call


def _name(path) -> str:
    return ".".join(path)


def layer_names(structure: ApplyStructure) -> dict[tuple, str]:
    """Each declared kernel's layer name: its parent's path (``"encoder.q"`` for ``encoder/q/w``), as NNX
    and Linen name layers, or the kernel's own path where its parent holds several declared kernels."""
    parents = [kernel[:-1] for kernel, _ in structure.layers]
    return {kernel: _name(kernel[:-1] if kernel[:-1] and parents.count(kernel[:-1]) == 1 else kernel)
            for kernel, _ in structure.layers}  # fmt: skip


def _with_kernels(params, structure: ApplyStructure, hook: Callable) -> dict:
    """A copy of ``params`` whose declared kernels are :class:`TappedKernel` s calling ``hook``."""

    def replace(node, path=()):
        if isinstance(node, dict):
            return {k: replace(v, (*path, k)) for k, v in node.items()}
        if path not in names:
            return node
        return TappedKernel("/".join(path), node, lambda kind, x, y, conv: hook(path, kind, x, y, conv))

    names = layer_names(structure)
    return replace(params)


def _run(structure: ApplyStructure, params, x):
    try:
        return structure.fn(params, x)
    except TypeError as e:
        if "TappedKernel" not in str(e) and "abstract array" not in str(e):
            raise
        raise InputError(
            f"the model used a declared kernel in a way layer capture cannot see ({e}). Use each declared kernel "
            "only as `x @ kernel` (dense) or through jaxpoison.models.plain.conv(x, kernel, ...) (convolution)."
        ) from e


def find_plain_layers(structure: ApplyStructure, params, state) -> tuple[list[Layer], list[str]]:
    """The declared layers (in call order, with the convolution settings of their use) and the parameters
    none of them covers.

    Raises:
      InputError: a declared kernel is never used, used more than once (shared weights), or used
        other than as ``x @ kernel`` / :func:`~jaxpoison.models.plain.conv`.
    """
    bias_of, names = dict(structure.layers), layer_names(structure)
    seen: dict[str, Layer] = {}
    calls: dict[str, int] = {}

    def hook(kernel_path, kind, x, y, conv):
        name = names[kernel_path]
        calls[name] = calls.get(name, 0) + 1
        bias = bias_of[kernel_path]
        kernel = leaf(params, kernel_path)
        seen.setdefault(name, Layer(name, kernel_path[:-1], kind, tuple(kernel.shape), bias is not None, conv,
                                    kernel_key=kernel_path[-1], bias_key=bias[-1] if bias else "bias"))  # fmt: skip
        return y

    trace_call(structure, params, lambda p, x: _run(structure, _with_kernels(p, structure, hook), x))
    unused = ["/".join(k) for k, _ in structure.layers if names[k] not in seen]
    if unused:
        raise InputError(f"declared kernel(s) {', '.join(unused)} are never used as `x @ kernel` or through "
                         "jaxpoison.models.plain.conv in the model's apply; fix the declaration.")  # fmt: skip
    shared = [name for name, count in calls.items() if count > 1]
    if shared:
        raise InputError(f"declared kernel(s) {', '.join(shared)} are used more than once per call (shared "
                         "weights have no single input per example); declare only kernels used once.")  # fmt: skip
    layers = list(seen.values())
    covered = {k for k, _ in structure.layers} | {b for _, b in structure.layers if b is not None}
    untracked = [_name(p) for p in param_paths(params) if tuple(p) not in covered]
    return layers, untracked


def tapped_plain_apply(structure: ApplyStructure, layers: list[Layer]) -> Callable:
    """``f(params, state, x, probes) -> (logits, inputs, outputs)`` with every tracked declared layer tapped."""
    tracked, names = {layer.name for layer in layers}, layer_names(structure)

    def f(params, state, x, probes):
        inputs, outputs = {}, {}

        def hook(kernel_path, kind, x_in, y, conv):
            name = names[kernel_path]
            if name not in tracked:
                return y
            if name in inputs:
                raise InputError(f"layer {name} is called more than once; shared layers cannot be tracked.")
            inputs[name], outputs[name] = x_in, y
            return y if probes is None else y + probes[name]

        logits = _run(structure, _with_kernels(params, structure, hook), x)
        return logits, inputs, outputs

    return f
