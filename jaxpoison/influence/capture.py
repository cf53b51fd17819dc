"""Explicit capture of layer inputs and output gradients, for K-FAC and EK-FAC.

Kronecker-factored curvature needs, for every tracked layer, the layer's input
``a`` (for a convolution: its input *patches*) and the gradient ``g`` of the loss
with respect to the layer's output, per example. jaxpoison captures both without
parsing the traced graph:

* an NNX model is merged from its graph definition inside the traced function, and each
  ``nnx.Linear`` / ``nnx.Conv`` instance of that private copy is switched to a
  tapped subclass whose ``__call__`` records its input and adds a zero *probe* to
  its output;
* the gradient of the summed per-example loss with respect to the probes is the
  per-example output gradient (examples are independent in inference mode).

Exact ``nnx.Linear`` and ``nnx.Conv`` layers (no feature groups) are tracked, and
``nnx.LinearGeneral`` and ``nnx.Einsum`` layers that contract their trailing axes (the query,
key, value and output projections of ``nnx.MultiHeadAttention``; an Einsum such as
``"btd,dh->bth"``), with their input and output axes flattened.
Every other parameter (BatchNorm scales, custom layers) is reported by name by
:func:`find_layers`, so callers can refuse or accept the gap knowingly.

Layer gradients use the kernel's layout: a layer's gradient is a matrix
``[in_dim, out]`` where ``in_dim`` is the flattened kernel input (``kh·kw·c_in``
for a convolution) plus one row for the bias when the layer has one. Frameworks that
store weights output-first (Equinox: ``[out, in]`` and OIHW kernels acting on CHW
activations) are brought to this convention by :func:`capture` and :func:`layer_gradient`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison.errors import InputError
from jaxpoison.influence.losses import LogitLoss
from jaxpoison.models import FunctionalModel, NNXStructure
from jaxpoison.models.plain import ApplyStructure


@dataclasses.dataclass(frozen=True)
class Layer:
    """One tracked layer.

    Attributes:
      name: dotted module path, e.g. ``"blocks.0.conv1"``.
      path: the module path as a tuple (keys into the params pytree).
      kind: ``"dense"`` or ``"conv"``.
      kernel_shape: shape of the kernel parameter.
      has_bias: whether a bias parameter exists (adds a row of ones to the inputs).
      conv: for convolutions, ``(kernel_size, strides, padding, input_dilation, kernel_dilation)``.
      kernel_key / bias_key: the names of the weight and bias parameters under ``path``.
      layout: ``"io"`` — kernel ``[in, out]`` or HWIO, channels-last activations (NNX, Linen);
        ``"oi"`` — weight ``[out, in]`` or OIHW, channels-first activations (Equinox).
      out_axes: how many trailing kernel axes are outputs (``nnx.LinearGeneral`` projecting to
        ``(heads, head_dim)`` has 2; its input axes are the rest, flattened in order).
    """

    name: str
    path: tuple
    kind: str
    kernel_shape: tuple[int, ...]
    has_bias: bool
    conv: tuple | None = None
    kernel_key: str = "kernel"
    bias_key: str = "bias"
    layout: str = "io"
    out_axes: int = 1

    @property
    def in_features(self) -> int:
        return int(np.prod(self.kernel_shape[1:] if self.layout == "oi" else self.kernel_shape[: -self.out_axes]))

    @property
    def out_features(self) -> int:
        return int(self.kernel_shape[0] if self.layout == "oi" else np.prod(self.kernel_shape[-self.out_axes :]))

    @property
    def in_dim(self) -> int:
        return self.in_features + int(self.has_bias)


class UntrackedParametersError(InputError):
    """Parameters exist that no curvature factor covers."""


def _name(path) -> str:
    return ".".join(str(k) for k in path)


def param_paths(tree, prefix=()) -> list[tuple]:
    """Key paths of the leaves of a nested-dict parameter tree."""
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            out += param_paths(v, (*prefix, k))
        return out
    return [prefix]


def _is_equinox(structure) -> bool:
    # Never imports equinox (an optional extra): an EquinoxStructure exists only once its module is loaded.
    module = sys.modules.get("jaxpoison.models.equinox")
    return module is not None and isinstance(structure, module.EquinoxStructure)


def find_layers(model: FunctionalModel) -> tuple[list[Layer], list[str]]:
    """The tracked layers of a model and the names of parameters none of them covers.

    Dispatches on the model's structure: Flax NNX (:func:`~jaxpoison.models.to_functional`),
    Linen (:func:`~jaxpoison.models.from_linen`), Equinox (:func:`~jaxpoison.models.from_equinox`)
    or a plain function with declared kernels (:func:`~jaxpoison.models.from_apply`).
    """
    from jaxpoison.models.linen import LinenStructure

    structure, params, state = model.structure, model.params, model.state
    if _is_equinox(structure):
        from jaxpoison.influence.equinox_capture import find_equinox_layers

        return find_equinox_layers(structure, params, state)
    if isinstance(structure, LinenStructure):
        from jaxpoison.influence.linen_capture import find_linen_layers

        return find_linen_layers(structure, params, state)
    if isinstance(structure, ApplyStructure):
        from jaxpoison.influence.plain_capture import find_plain_layers

        return find_plain_layers(structure, params, state)
    if not isinstance(structure, NNXStructure):
        raise InputError(f"jaxpoison cannot find the layers of a model with a {type(structure).__name__} structure; "
                         "build it with to_functional, from_linen, from_equinox or from_apply.")  # fmt: skip
    module = nnx.merge(structure.graphdef, params, state, copy=True)
    layers = []
    for path, sub in nnx.iter_graph(module):
        if type(sub) in (nnx.LinearGeneral, nnx.Einsum):
            out_axes = _trailing_projection(sub) if type(sub) is nnx.LinearGeneral else _einsum_projection(sub)
            if out_axes is not None:
                shape = tuple(sub.kernel.shape)
                layers.append(Layer(_name(path), tuple(path), "dense", shape, sub.bias is not None, out_axes=out_axes))
            continue  # other axis layouts: reported as untracked
        kind = {nnx.Linear: "dense", nnx.Conv: "conv"}.get(type(sub))
        if kind is None:
            continue
        if kind == "conv" and (
            len(sub.kernel_size) != 2
            or sub.feature_group_count != 1
            or (isinstance(sub.padding, str) and sub.padding not in ("SAME", "VALID"))
        ):
            continue  # 1-D/3-D, grouped or circular convolutions: reported as untracked
        conv = None
        if kind == "conv":
            conv = (tuple(sub.kernel_size), sub.strides, sub.padding, sub.input_dilation, sub.kernel_dilation)
        layers.append(Layer(_name(path), tuple(path), kind, tuple(sub.kernel.shape), sub.bias is not None, conv))
    covered = {(*layer.path, "kernel") for layer in layers}
    covered |= {(*layer.path, "bias") for layer in layers if layer.has_bias}
    untracked = [_name(p) for p in param_paths(nnx.to_pure_dict(params)) if tuple(p) not in covered]
    return layers, untracked


def _trailing_projection(layer: nnx.LinearGeneral) -> int | None:
    """Its output axes if a LinearGeneral contracts the trailing input axes with no batch axes: a
    dense layer over flattened features, applied at every leading position (attention's projections)."""
    if not layer.batch_axis and tuple(layer.axis) == tuple(range(-len(layer.in_features), 0)):
        return len(layer.out_features)
    return None


def _einsum_projection(layer: nnx.Einsum) -> int | None:
    """Its output axes if an Einsum is a trailing projection, e.g. ``"btd,dh->bth"``: the kernel's
    first axes contract the input's last ones in order, its other axes become the output's last
    ones in order, the input's leading axes pass through unchanged, and any bias spans the output
    axes. Such a layer is a dense layer at every leading position; other equations are untracked."""
    equation = layer.einsum_str.replace(" ", "")
    if "->" not in equation or equation.count(",") != 1:
        return None
    inputs, out = equation.split("->")
    lhs, rhs = inputs.split(",")
    letters = [c for c in lhs + rhs if c != "."]
    if "." in rhs or len(set(rhs)) != len(rhs) or len(set(lhs.replace("...", "."))) != len(lhs.replace("...", ".")):
        return None
    contracted = sum(1 for c in rhs if c in lhs)
    out_axes = len(rhs) - contracted
    if not 0 < contracted <= len(lhs) or out_axes < 1 or len(letters) != len(set(letters)) + contracted:
        return None  # every contracted letter appears exactly twice; nothing else repeats
    if lhs[len(lhs) - contracted :] != rhs[:contracted] or out[len(out) - out_axes :] != rhs[contracted:]:
        return None
    if lhs[: len(lhs) - contracted] != out[: len(out) - out_axes]:
        return None  # the leading (position) axes must pass through in order
    if layer.bias is not None and tuple(layer.bias.shape) != tuple(layer.kernel.shape[contracted:]):
        return None
    return out_axes


def check_untracked(untracked: list[str], on_untracked: str) -> None:
    """Raise or warn about parameters no factor covers (``on_untracked``: ``"error"``, ``"warn"``, ``"ignore"``)."""
    if not untracked or on_untracked == "ignore":
        return
    shown = ", ".join(untracked[:12]) + (f", … ({len(untracked)} in all)" if len(untracked) > 12 else "")
    message = (
        f"{len(untracked)} parameter arrays are not covered by any Dense/Conv factor and are left out of the "
        f"influence scores: {shown}. Pass on_untracked='warn' or 'ignore' to accept this."
    )
    if on_untracked == "error":
        raise UntrackedParametersError(message)
    if on_untracked == "warn":
        import warnings

        warnings.warn(message, stacklevel=3)
    else:
        raise InputError(f"on_untracked must be 'error', 'warn' or 'ignore'; got {on_untracked!r}.")


# --------------------------------------------------------------------------- tapping

_ACTIVE_TAP: contextvars.ContextVar = contextvars.ContextVar("jaxpoison_tap", default=None)


class _Tap:
    def __init__(self, names: dict[int, str], probes: dict | None):
        self.names, self.probes = names, probes
        self.inputs: dict[str, jax.Array] = {}
        self.outputs: dict[str, jax.Array] = {}

    def __call__(self, layer, x, call, **kwargs):
        name = self.names[id(layer)]
        if name in self.inputs:
            raise InputError(f"layer {name} is called more than once; shared layers cannot be tracked.")
        y = call(layer, x, **kwargs)
        self.inputs[name] = x
        self.outputs[name] = y
        return y if self.probes is None else y + self.probes[name]


class _TappedLinear(nnx.Linear):
    def __call__(self, x, **kwargs):
        return _ACTIVE_TAP.get()(self, x, nnx.Linear.__call__, **kwargs)


class _TappedConv(nnx.Conv):
    def __call__(self, x, **kwargs):
        return _ACTIVE_TAP.get()(self, x, nnx.Conv.__call__, **kwargs)


class _TappedLinearGeneral(nnx.LinearGeneral):
    def __call__(self, x, **kwargs):  # MultiHeadAttention passes out_sharding
        return _ACTIVE_TAP.get()(self, x, nnx.LinearGeneral.__call__, **kwargs)


class _TappedEinsum(nnx.Einsum):
    def __call__(self, x, einsum_str=None, **kwargs):
        if einsum_str is not None:  # the layer was found from its constructor's equation
            raise InputError("a tracked nnx.Einsum must use the equation it was built with; it was called with "
                             f"einsum_str={einsum_str!r}.")  # fmt: skip
        return _ACTIVE_TAP.get()(self, x, nnx.Einsum.__call__, **kwargs)


_TAPPED = {nnx.Linear: _TappedLinear, nnx.Conv: _TappedConv, nnx.LinearGeneral: _TappedLinearGeneral,
           nnx.Einsum: _TappedEinsum}  # fmt: skip


def tapped_apply(structure, layers: list[Layer]) -> Callable:
    """``f(params, state, x, probes) -> (logits, inputs, outputs)`` with every tracked layer tapped.

    ``structure`` is a model's static structure and ``x`` a *normalised* batch. ``probes``
    (``None`` or a dict ``name -> array`` shaped like the layer's output) is added to each
    tracked layer's output; ``inputs``/``outputs`` map names to the layers' raw inputs and outputs.
    """
    from jaxpoison.models.linen import LinenStructure

    if _is_equinox(structure):
        from jaxpoison.influence.equinox_capture import tapped_equinox_apply

        return tapped_equinox_apply(structure, layers)
    if isinstance(structure, LinenStructure):
        from jaxpoison.influence.linen_capture import tapped_linen_apply

        return tapped_linen_apply(structure, layers)
    if isinstance(structure, ApplyStructure):
        from jaxpoison.influence.plain_capture import tapped_plain_apply

        return tapped_plain_apply(structure, layers)
    tracked = {layer.name for layer in layers}
    graphdef = structure.graphdef

    def f(params, state, x, probes):
        module = nnx.merge(graphdef, params, state, copy=True)
        names = {}
        for path, sub in nnx.iter_graph(module):
            if _name(path) in tracked and type(sub) in _TAPPED:
                sub.__class__ = _TAPPED[type(sub)]  # only this private copy is changed
                names[id(sub)] = _name(path)
        tap = _Tap(names, probes)
        token = _ACTIVE_TAP.set(tap)
        try:
            logits = module(x)
        finally:
            _ACTIVE_TAP.reset(token)
        return logits, tap.inputs, tap.outputs

    return f


def conv_patches(x: jax.Array, layer: Layer) -> jax.Array:
    """Input patches ``[N, P, kh·kw·c_in]`` of a convolution, ordered like its HWIO kernel.

    Built from ``kh·kw`` strided slices of the padded input: pure data movement.
    (``lax.conv_general_dilated_patches`` computes the same tensor as a convolution with
    an identity kernel, which costs ``(kh·kw·c_in)²`` multiply-adds per position: 17× the
    time of this version for a 3×3×32 layer on CPU.)
    """
    kernel_size, strides, padding, input_dilation, kernel_dilation = layer.conv
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, pair(strides), pair(kernel_dilation)
    if pair(input_dilation) != (1, 1):  # transposed-style convolutions: the general (slow) path
        patches = jax.lax.conv_general_dilated_patches(
            x, kernel_size, (sh, sw), padding, lhs_dilation=pair(input_dilation), rhs_dilation=(dh, dw),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        n, c = x.shape[0], x.shape[-1]
        patches = patches.reshape(n, -1, c, kh * kw)
        return jnp.swapaxes(patches, -1, -2).reshape(n, patches.shape[1], -1)
    if isinstance(padding, str):
        effective = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
        pads = jax.lax.padtype_to_pads(x.shape[1:3], effective, (sh, sw), padding)
    else:
        pads = [tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in padding]
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    n, hp, wp, c = xp.shape
    out_h = (hp - (kh - 1) * dh - 1) // sh + 1
    out_w = (wp - (kw - 1) * dw - 1) // sw + 1
    slices = [
        jax.lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (out_h - 1) * sh + 1, j * dw + (out_w - 1) * sw + 1, c),
                      (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]  # fmt: skip
    return jnp.stack(slices, axis=3).reshape(n, out_h * out_w, kh * kw * c)


def layer_activations(x: jax.Array, layer: Layer) -> jax.Array:
    """Per-position layer inputs ``[N, P, in_dim]`` (patches for conv; a ones column for bias)."""
    a = conv_patches(x, layer) if layer.kind == "conv" else x.reshape(x.shape[0], -1, layer.in_features)
    if layer.has_bias:
        a = jnp.concatenate([a, jnp.ones((*a.shape[:-1], 1), a.dtype)], axis=-1)
    return a


def capture(
    model: FunctionalModel,
    layers: list[Layer],
    x: jax.Array,
    labels: jax.Array,
    loss: LogitLoss,
    sample_key: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
    """Per-example layer inputs and output gradients of ``loss`` for one batch.

    Args:
      model: the model (its parameters are held fixed).
      layers: the tracked layers (from :func:`find_layers`).
      x: a batch ``[N, ...]`` as the model takes it (pixel space: the model normalises it).
      labels: ``[N]`` labels (ignored when ``sample_key`` is given).
      loss: per-example loss of ``(logits, label)``.
      sample_key: if given, labels are drawn from the model's own predictive
        distribution (the true Fisher) instead of taken from ``labels``.
      mask: ``[N]`` booleans; rows where it is false get zero activations and
        gradients (padding of a last partial batch).

    Returns:
      ``(logits, {name: (a [N, P, in_dim], g [N, P, out])})``.
    """
    apply_tapped = tapped_apply(model.structure, list(layers))
    params, state, x = model.params, model.state, model.normalize(x)
    _, _, outputs = jax.eval_shape(lambda p, s, x: apply_tapped(p, s, x, None), params, state, x)
    zeros = {name: jnp.zeros(o.shape, o.dtype) for name, o in outputs.items()}

    def total_loss(probes):
        logits, inputs, _ = apply_tapped(params, state, x, probes)
        y = labels
        if sample_key is not None:
            y = jax.random.categorical(sample_key, jax.lax.stop_gradient(logits))
        values = jax.vmap(loss)(logits, y)
        if mask is not None:
            values = jnp.where(mask, values, 0.0)
        return values.sum(), (logits, inputs)

    out_grads, (logits, inputs) = jax.grad(total_loss, has_aux=True)(zeros)
    captured = {}
    for layer in layers:
        g, x_in = out_grads[layer.name], inputs[layer.name]
        if layer.layout == "oi" and layer.kind == "conv":  # [N, C, H, W] -> NHWC, the layout of the patches
            g, x_in = jnp.moveaxis(g, 1, -1), jnp.moveaxis(x_in, 1, -1)
        # Inputs in the layer's compute dtype (the dtype of its output), as the layer itself promotes them.
        a = layer_activations(x_in.astype(g.dtype), layer)
        g = g.reshape(a.shape[0], -1, layer.out_features)
        if mask is not None:
            a = a * mask[:, None, None].astype(a.dtype)
        captured[layer.name] = (a, g)
    return logits, captured


def layer_gradient(params_grad: Any, layer: Layer) -> jax.Array:
    """A layer's gradient matrix ``[..., in_dim, out]`` from a gradient pytree (leading axes kept)."""
    node = nnx.to_pure_dict(params_grad) if not isinstance(params_grad, dict) else params_grad
    for k in layer.path:
        node = node[k]
    kernel = node[layer.kernel_key]
    lead = kernel.shape[: kernel.ndim - len(layer.kernel_shape)]
    if layer.layout == "oi":  # [out, in, kh, kw] -> [kh, kw, in, out]: the HWIO order of the patches
        kernel = jnp.moveaxis(jnp.moveaxis(kernel, len(lead), -1), len(lead), -2)
    mat = kernel.reshape(*lead, layer.in_features, layer.out_features)
    if layer.has_bias:
        bias = node[layer.bias_key]
        bias = bias.reshape(*lead, 1, layer.out_features)
        mat = jnp.concatenate([mat, bias], axis=-2)
    return mat


def per_example_layer_gradients(a: jax.Array, g: jax.Array) -> jax.Array:
    """``Σ_p a_p g_pᵀ`` per example: ``[N, in_dim, out]``."""
    return jnp.einsum("npi,npo->nio", a, g)
