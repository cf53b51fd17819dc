"""Plain ``apply(params, x)`` models at jaxpoison's boundary: hand-written JAX, Haiku-transformed functions.

A plain model is a function and a parameter pytree of nested dicts; nothing in it says
which arrays are layer kernels. :func:`from_apply` takes that declaration from the user —
the paths of the dense and convolution kernels (and their biases) — and turns the pair into
the same :class:`~jaxpoison.models.FunctionalModel` every other adapter produces.

K-FAC/EK-FAC need each declared layer's input and output gradient per example. The function
is never parsed: while layers are captured, each declared kernel reaches ``apply`` as a
:class:`TappedKernel`, which records its input wherever the model *uses* it —

* ``x @ kernel`` (a dense layer, ``kernel [in, out]``, over any leading axes: positions of a
  sequence are summed like a convolution's), or
* :func:`conv` ``(x, kernel, ...)`` (an NHWC convolution with an HWIO kernel).

Outside capture (training, evaluation) ``apply`` sees plain arrays, so :func:`conv` is just
``lax.conv_general_dilated``. Any other use of a declared kernel during capture (``jnp.dot``,
``kernel.T``, ``lax.conv_general_dilated``) fails with an error that names the kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxpoison.errors import InputError
from jaxpoison.models.functional import FunctionalModel

Path = tuple[str, ...]


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple | list) else (int(v), int(v))


def conv(x: jax.Array, kernel, strides=1, padding="SAME", dilation=1) -> jax.Array:
    """A 2-D convolution of an NHWC batch with an HWIO kernel, as a plain model writes it.

    Args:
      x: ``[N, H, W, C_in]``.
      kernel: ``[kh, kw, C_in, C_out]`` (an array, or the :class:`TappedKernel` capture hands in).
      strides, dilation: an int or a pair.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
    """
    if isinstance(kernel, TappedKernel):
        return kernel.conv(x, strides, padding, dilation)
    dtype = jnp.result_type(x, kernel)  # promote as `x @ kernel` does; lax refuses mixed dtypes
    return jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), _pair(strides), padding,
                                        rhs_dilation=_pair(dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip


class TappedKernel:
    """A declared kernel as ``apply`` sees it during layer capture.

    ``hook(kind, x, y, conv)`` is called with the layer's input ``x`` and output ``y`` and
    returns the output the model continues with (the capture adds its probe there). Only
    ``x @ kernel`` and :func:`conv` are supported uses; JAX refuses every other one, since a
    ``TappedKernel`` is not an array.
    """

    def __init__(self, name: str, value: jax.Array, hook: Callable):
        self.name, self.value, self.hook = name, value, hook

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return self.value.ndim

    def __rmatmul__(self, x):
        if self.value.ndim != 2:
            raise InputError(f"declared dense kernel {self.name} has shape {self.value.shape}; x @ kernel needs "
                             "[in, out]. Declare convolution kernels under conv=.")  # fmt: skip
        return self.hook("dense", x, x @ self.value, None)

    def conv(self, x, strides, padding, dilation):
        if self.value.ndim != 4:
            raise InputError(f"conv() got the declared kernel {self.name} of shape {self.value.shape}; it needs HWIO "
                             "[kh, kw, C_in, C_out].")  # fmt: skip
        if isinstance(padding, str) and padding not in ("SAME", "VALID"):
            raise InputError(f"conv padding must be 'SAME', 'VALID' or explicit pairs; got {padding!r}.")
        y = conv(x, self.value, strides, padding, dilation)
        padding = padding if isinstance(padding, str) else tuple(tuple(int(v) for v in p) for p in padding)
        return self.hook("conv", x, y, (tuple(self.value.shape[:2]), _pair(strides), padding, (1, 1), _pair(dilation)))

    def __repr__(self) -> str:
        return f"TappedKernel({self.name}, shape={self.value.shape})"


@dataclasses.dataclass(frozen=True)
class ApplyStructure:
    """The static half of a plain model: its functions and its declared layers.

    Attributes:
      fn: ``fn(params, x) -> logits`` on a normalised batch.
      features_fn: ``features_fn(params, x) -> [N, D]`` penultimate features, or ``None``.
      layers: ``(kernel path, bias path or None)`` of every declared dense or conv layer.
      input_shape: one example's shape (layer discovery traces one call).
      input_dtype: the inputs' dtype when it is not the parameters' (``"int32"`` for token ids).
    """

    fn: Callable
    features_fn: Callable | None
    layers: tuple[tuple[Path, Path | None], ...]
    input_shape: tuple[int, ...]
    input_dtype: str | None = None

    def apply(self, params, state, x):
        return self.fn(params, x)

    def features(self, params, state, x):
        if self.features_fn is None:
            raise InputError("this plain model has no features function; pass from_apply(..., features=f) with "
                             "f(params, x) -> penultimate activations to use feature-based detectors.")  # fmt: skip
        return self.features_fn(params, x)

    def train_apply(self, params, state, x):
        return self.fn(params, x), state


def _path(path, what: str) -> Path:
    """A parameter path from ``"a/b"``, ``"a.b"`` or a tuple of keys."""
    if isinstance(path, str):
        parts = tuple(p for p in path.replace(".", "/").split("/") if p)
    elif isinstance(path, tuple | list) and all(isinstance(p, str) for p in path):
        parts = tuple(path)
    else:
        raise InputError(f"{what} path {path!r} must be a string such as 'dense1/w' or a tuple of dict keys.")
    if not parts:
        raise InputError(f"{what} path {path!r} is empty.")
    return parts


def leaf(params, path: Path, what: str = "parameter"):
    """The leaf of a nested-dict pytree at ``path``, refusing a path that is not there."""
    node = params
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise InputError(f"{what} {'/'.join(path)} is not in the parameters (no key {key!r} at "
                             f"{'/'.join(path[:i]) or 'the top level'}).")  # fmt: skip
        node = node[key]
    return node


def from_apply(
    apply: Callable,
    params: Mapping,
    input_shape: tuple[int, ...],
    *,
    dense: Mapping | tuple = (),
    conv: Mapping | tuple = (),
    features: Callable | None = None,
    input_dtype: str | None = None,
    mean=None,
    std=None,
) -> FunctionalModel:
    """A plain ``apply(params, x)`` model, with its layers declared, as a :class:`FunctionalModel`.

    Args:
      apply: ``apply(params, x) -> logits [N, classes]`` on a normalised batch ``[N, *input_shape]``.
        For a Haiku model, ``hk.transform(f).apply`` with ``rng=None`` bound (e.g. ``lambda p, x:
        transformed.apply(p, None, x)``); its parameters are a nested dict.
      params: the parameters, nested dicts of arrays; every leaf is trained and differentiated.
      input_shape: one example's shape (no batch axis).
      dense: the dense kernels ``[in, out]``, used as ``x @ kernel``: a mapping ``kernel path ->
        bias path`` (``None``: no bias) or a sequence of kernel paths. A path is ``"layer/w"`` or
        a tuple of keys; a bias must sit beside its kernel.
      conv: the convolution kernels (HWIO), used through :func:`jaxpoison.models.plain.conv`,
        declared the same way.
      features: ``features(params, x) -> [N, D]``, the penultimate activations (what spectral
        signatures and activation clustering read); without it those detectors refuse the model.
      input_dtype: the dtype of the inputs when it is not the parameters' (``"int32"`` for token ids).
      mean: per-channel input mean, subtracted at the model's door.
      std: per-channel input standard deviation, divided at the model's door.

    Parameters no declared layer covers (embeddings, norms) are listed by name when influence
    is computed, as for every other adapter.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> model = from_apply(lambda p, x: x @ p["w"] + p["b"], params, (4,), dense={"w": "b"})
      >>> model(jnp.ones((2, 4))).shape
      (2, 3)
    """
    if not callable(apply):
        raise InputError(f"from_apply takes a function apply(params, x); got {type(apply).__name__}.")
    if features is not None and not callable(features):
        raise InputError(f"features must be a function features(params, x); got {type(features).__name__}.")
    if not isinstance(params, Mapping):
        raise InputError(f"params must be nested dicts of arrays; got {type(params).__name__}.")
    declared: list[tuple[Path, Path | None]] = []
    for kind, spec in (("dense", dense), ("conv", conv)):
        pairs = spec.items() if isinstance(spec, Mapping) else ((p, None) for p in spec)
        for kernel_path, bias_path in pairs:
            kernel_path = _path(kernel_path, f"{kind} kernel")
            kernel = leaf(params, kernel_path, f"{kind} kernel")
            rank = 2 if kind == "dense" else 4
            if not hasattr(kernel, "shape") or len(kernel.shape) != rank:
                layout = "[in, out]" if rank == 2 else "HWIO"
                raise InputError(f"{kind} kernel {'/'.join(kernel_path)} must have {rank} axes ({layout}); got "
                                 f"{getattr(kernel, 'shape', kernel)!r}.")  # fmt: skip
            if bias_path is not None:
                bias_path = _path(bias_path, f"{kind} bias")
                bias = leaf(params, bias_path, f"{kind} bias")
                if bias_path[:-1] != kernel_path[:-1]:
                    raise InputError(f"bias {'/'.join(bias_path)} must sit beside its kernel {'/'.join(kernel_path)} "
                                     "(the same parent dict).")  # fmt: skip
                if tuple(getattr(bias, "shape", ())) != (kernel.shape[-1],):
                    raise InputError(f"bias {'/'.join(bias_path)} has shape {getattr(bias, 'shape', bias)!r}; the "
                                     f"kernel {'/'.join(kernel_path)} needs ({kernel.shape[-1]},).")  # fmt: skip
            declared.append((kernel_path, bias_path))
    kernels = [k for k, _ in declared]
    if len(set(kernels)) != len(kernels):
        raise InputError("a kernel is declared twice; declare each kernel once, under dense= or conv=.")
    structure = ApplyStructure(apply, features, tuple(declared), tuple(int(d) for d in input_shape),
                               None if input_dtype is None else jnp.dtype(input_dtype).name)  # fmt: skip
    params = jax.tree.map(jnp.asarray, dict(params))
    return FunctionalModel(params, {}, structure).with_normalization(mean, std)


def trace_call(structure: ApplyStructure, params: Any, call: Callable) -> Any:
    """Run ``call(params, x)`` abstractly on one example of the model's input shape (layer discovery)."""
    leaves = jax.tree.leaves(params)
    dtype = structure.input_dtype or (jnp.result_type(*leaves) if leaves else jnp.float32)
    return jax.eval_shape(call, params, jax.ShapeDtypeStruct((1, *structure.input_shape), dtype))
