"""Keyed image transformations that build Δ-Influence's modified queries.

Δ-Influence flags poisoned training points through *influence collapse*. It starts from one test
image that triggers the poison. It makes ``n_b`` (default 50) modified copies of that image; each
copy gets one random transformation (drawn uniformly from a list of names) and a flipped label.
A transformation breaks the link between the trigger and the target label, so the influence of
the poisoned training points on a modified query falls sharply compared with the original query,
while clean points' influence changes much less. Points whose influence drops across most of the
``n_b`` queries are flagged. This module makes the queries: :func:`transform_batch` for the images
and :func:`flip_labels` for the labels.

Every transformation is a pure function ``(key, image, params) -> image`` on one float image
``[H, W, C]`` (C = 1 or 3). It keeps the shape and dtype and is deterministic given the key.
Because the signatures match, :func:`transform_batch` runs one jitted, vmapped function that
picks a *different* transformation for each query with ``jax.lax.switch``. Under ``vmap`` the
switch becomes a select, so every branch runs for every query. That costs little for
CIFAR-sized images, and one compilation serves every mix of transformations.

The names are those of :data:`TRANSFORM_NAMES`, the eight the paper lists (its Appendix B.2). The
reference implementation used seven of them, :data:`REFERENCE_TRANSFORM_NAMES`; it has no separate
rotation. Each follows the torchvision transform the reference called, and :class:`TransformParams`
holds their ranges.

- ``flip``: horizontal flip.
- ``color_jitter``: brightness, contrast, saturation and hue factors, applied in that fixed order
  and clamped to [0, 1] after each step, as torchvision clamps float images. (torchvision's
  ColorJitter shuffles the order for each call; here the order is fixed.)
- ``random_affine``: rotation, scale and x-shear about the image centre; nearest-neighbour
  sampling, zero fill.
- ``elastic``: a smoothed random displacement field with bilinear sampling and zero fill, scaled
  as in torchvision's ElasticTransform.
- ``blur``: torchvision's ``GaussianBlur((5, 9), (8, 10))``: one fixed kernel, 5 taps wide and 9
  tall, with σ ~ U[8, 10] drawn per call for both axes; reflect padding.
- ``invert``: ``1 - x``.
- ``color_switch``: swap the first two channels (R and G).
- ``rotation``: rotation about the centre by a random angle whose magnitude lies in [30°, 180°],
  either sign; bilinear sampling, zero fill. The paper names it without settings, and the
  reference had only the affine's rotation, so the range is jaxpoison's choice.

**Grayscale images (C = 1).** ``color_switch`` is the identity, so :func:`transform_batch` never
draws it for a grayscale image (:data:`IDENTITY_ON_GRAYSCALE`): such a query would equal the
original, its influence change would be 0, and it could never count as a collapse.
``color_jitter`` applies only brightness and contrast (saturation and hue are no-ops, as in
torchvision); those two still change the image, so it stays. All other transformations act on the
single channel as usual. Some transformations leave particular images unchanged: a flip of a
mirror-symmetric image, a geometric transformation of a blank one. That is a property of the image,
not of the transformation, so it is not handled here; Δ-Influence's query construction redraws
such queries. Each transformation uses its key the same way for both channel counts, so one key
gives the same geometry for an RGB image and its grayscale version (:func:`transform_batch` may
still pick different transformations, as it draws from fewer names on one channel).

**Pixel space or normalised space.** By default (``space="pixel"``) the transformations act on
pixel values in [0, 1], and :func:`transform_batch` returns values in [0, 1]. The reference
implementation applied them to the normalised tensor ``(x - mean) / std`` instead. With
``space="normalized"``, :func:`transform_batch` reproduces that: it normalises, transforms, and
maps back with ``x * std + mean``. Nothing is clipped except where a transformation clamps by
itself, so ``color_jitter`` clamps to [0, 1] *in normalised units*, ``invert`` reflects about 0.5
normalised, and the zero fill of ``random_affine``, ``elastic`` and ``rotation`` comes back as the
channel mean.
This mode is for reproducing the reference's numbers, not for new work.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import types
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from jaxpoison.errors import InputError

# The reference's seven in their historical order, then the paper's eighth: appending keeps each
# name's position, which is what transform_batch's choice indices refer to.
TRANSFORM_NAMES = ("flip", "color_jitter", "random_affine", "elastic", "blur", "invert", "color_switch", "rotation")
REFERENCE_TRANSFORM_NAMES = TRANSFORM_NAMES[:7]
IDENTITY_ON_GRAYSCALE = frozenset({"color_switch"})
"""Transformations that return every single-channel image unchanged; never drawn for C = 1."""
SPACES = ("pixel", "normalized")

# ITU-R 601 luma weights, as in torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _as_range(name: str, value, *, lower: float | None = None, upper: float | None = None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"TransformParams.{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not lo <= hi:
        raise InputError(f"TransformParams.{name} must have low <= high, got {value!r}")
    if lower is not None and lo < lower:
        raise InputError(f"TransformParams.{name} must lie in [{lower}, ...], got {value!r}")
    if upper is not None and hi > upper:
        raise InputError(f"TransformParams.{name} must lie in [..., {upper}], got {value!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class TransformParams:
    """Ranges of the random transformations; every range is a ``(low, high)`` uniform draw.

    The defaults follow the Δ-Influence reference. Angles are in degrees and lengths in pixels.
    The class is frozen and hashable, so an instance can be a static argument of ``jax.jit``.
    Use ``dataclasses.replace(DEFAULT_PARAMS, ...)`` to change a field.
    """

    brightness: tuple[float, float] = (0.9, 1.1)
    """Brightness factor ``b``: ``x * b``."""
    contrast: tuple[float, float] = (0.9, 1.1)
    """Contrast factor: blend with the image's mean grayscale value."""
    saturation: tuple[float, float] = (0.6, 1.4)
    """Saturation factor: blend with the per-pixel grayscale (RGB only)."""
    hue: tuple[float, float] = (-0.1, 0.1)
    """Hue shift, in turns (RGB only); must lie in [-0.5, 0.5]."""
    degrees: tuple[float, float] = (-180.0, 180.0)
    """Rotation angle of ``random_affine``."""
    scale: tuple[float, float] = (1.0, 2.0)
    """Scale factor of ``random_affine`` (> 1 zooms in)."""
    shear: tuple[float, float] = (-10.0, 10.0)
    """x-shear angle of ``random_affine``; must lie strictly inside (-90, 90)."""
    elastic_alpha: float = 150.0
    """torchvision's ``alpha``; the displacement in pixels is ``alpha / 2`` times the smoothed noise."""
    elastic_sigma: float = 5.0
    """Standard deviation, in pixels, of the Gaussian that smooths the displacement noise (0: no smoothing)."""
    blur_kernel_size: tuple[int, int] = (5, 9)
    """Fixed blur kernel ``(width, height)`` in taps, torchvision's ``(kx, ky)`` order; odd ints."""
    blur_sigma: tuple[float, float] = (8.0, 10.0)
    """Standard deviation of the blur kernel, in pixels, drawn per call and shared by both axes."""
    rotation_degrees: tuple[float, float] = (30.0, 180.0)
    """Magnitude of ``rotation``'s angle; the sign is drawn separately. Must lie in [0, 180]."""

    def __post_init__(self):
        # Normalise to tuples of floats: the instance must hash (jit static argument) and compare
        # equal however the user spelled it.
        set_ = functools.partial(object.__setattr__, self)
        set_("brightness", _as_range("brightness", self.brightness, lower=0.0))
        set_("contrast", _as_range("contrast", self.contrast, lower=0.0))
        set_("saturation", _as_range("saturation", self.saturation, lower=0.0))
        set_("hue", _as_range("hue", self.hue, lower=-0.5, upper=0.5))
        set_("degrees", _as_range("degrees", self.degrees))
        set_("scale", _as_range("scale", self.scale))
        if self.scale[0] <= 0:
            raise InputError(f"TransformParams.scale must be positive, got {self.scale!r}")
        set_("shear", _as_range("shear", self.shear))
        if not -90 < self.shear[0] <= self.shear[1] < 90:
            raise InputError(f"TransformParams.shear must lie strictly inside (-90, 90) degrees, got {self.shear!r}")
        set_("elastic_alpha", float(self.elastic_alpha))
        set_("elastic_sigma", float(self.elastic_sigma))
        if self.elastic_alpha < 0 or self.elastic_sigma < 0:
            raise InputError("TransformParams.elastic_alpha and elastic_sigma must be >= 0")
        try:
            size = tuple(operator.index(k) for k in self.blur_kernel_size)
        except TypeError:
            size = ()
        if len(size) != 2 or any(k < 1 or k % 2 == 0 for k in size):
            raise InputError(
                f"TransformParams.blur_kernel_size must be a (width, height) pair of odd positive ints, "
                f"got {self.blur_kernel_size!r}"
            )
        set_("blur_kernel_size", size)
        set_("blur_sigma", _as_range("blur_sigma", self.blur_sigma))
        if self.blur_sigma[0] <= 0:
            raise InputError(f"TransformParams.blur_sigma must be positive, got {self.blur_sigma!r}")
        set_("rotation_degrees", _as_range("rotation_degrees", self.rotation_degrees, lower=0.0, upper=180.0))


DEFAULT_PARAMS = TransformParams()


# ---------------------------------------------------------------------------------------------
# Helpers


def _uniform(key: jax.Array, bounds: Sequence[tuple[float, float]], dtype=jnp.float32) -> jax.Array:
    """One draw from each ``(low, high)`` range, as a vector; ``low == high`` gives exactly ``low``."""
    # One flat threefry call per transformation: separate splits and draws each add to the
    # compile time, which dominates for the small images these run on.
    lo, hi = (jnp.asarray(v, dtype) for v in zip(*bounds, strict=True))
    return lo + jax.random.uniform(key, (len(bounds),), dtype) * (hi - lo)


def _grayscale(image: jax.Array) -> jax.Array:
    """Luma ``[H, W, 1]`` of an RGB image; a grayscale image is returned as is."""
    if image.shape[-1] == 1:
        return image
    weights = jnp.asarray(_GRAY_WEIGHTS, image.dtype).reshape((1,) * (image.ndim - 1) + (-1,))
    return jnp.sum(image * weights, axis=-1, keepdims=True)


def _reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """numpy ``mode="reflect"`` (edge not repeated), also for padding wider than the axis."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def _filter_matrix(n: int, kernel: jax.Array) -> jax.Array:
    """``[n, n]`` matrix ``M`` with ``M @ x`` = reflect-padded correlation of ``x`` with ``kernel``.

    Folding the padding into a matrix keeps any padding width valid (torch's reflect pad needs
    pad < size) and turns each pass into one matmul.
    """
    taps = kernel.shape[0]
    # Shapes are static, so which input each (output, tap) pair reads is a constant one-hot
    # table; a contraction with it compiles far faster than a scatter, notably under vmap.
    offsets = np.arange(n)[:, None] + np.arange(taps)[None, :] - taps // 2
    one_hot = _reflect_index(offsets, n)[..., None] == np.arange(n)
    return jnp.einsum("k,ikj->ij", kernel, one_hot.astype(kernel.dtype), precision=jax.lax.Precision.HIGHEST)


def _separable_filter(image: jax.Array, row_kernel: jax.Array, col_kernel: jax.Array | None = None) -> jax.Array:
    """Filter ``image`` ``[H, W, C]`` with symmetric 1-D kernels: ``row_kernel`` down the height
    (axis 0), ``col_kernel`` (default: the same) along the width (axis 1)."""
    h, w = image.shape[:2]
    row_kernel = row_kernel.astype(image.dtype)
    col_kernel = row_kernel if col_kernel is None else col_kernel.astype(image.dtype)
    # HIGHEST: accelerators would otherwise use reduced-precision matmuls for a pixel-level filter.
    hi = jax.lax.Precision.HIGHEST
    out = jnp.einsum("ij,jwc->iwc", _filter_matrix(h, row_kernel), image, precision=hi)
    return jnp.einsum("vw,iwc->ivc", _filter_matrix(w, col_kernel), out, precision=hi)


def gaussian_kernel(size, sigma, taps: int = 9) -> jax.Array:
    """1-D Gaussian kernel of ``size`` taps, zero-padded to ``taps`` taps and summing to 1.

    Tap ``i`` sits at offset ``x = i - taps // 2`` and has weight ``exp(-x² / 2σ²)`` when
    ``|x| <= size // 2``, else 0. It equals torchvision's ``size``-tap kernel, padded with zeros.
    ``size`` and ``sigma`` may be traced, so one static shape serves every drawn kernel size.
    """
    if taps < 1 or taps % 2 == 0:
        raise InputError(f"taps must be a positive odd int, got {taps}")
    if isinstance(size, int | np.integer) and not (1 <= size <= taps and size % 2 == 1):
        raise InputError(f"size must be odd and in [1, taps={taps}], got {size}")
    offsets = jnp.arange(taps, dtype=jnp.float32) - taps // 2
    weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
    weights = jnp.where(jnp.abs(offsets) <= size // 2, weights, 0.0)
    return weights / jnp.sum(weights)


def gaussian_blur(image: jax.Array, size, sigma, taps: int | None = None) -> jax.Array:
    """Separable Gaussian blur of ``[H, W, C]`` with one ``sigma`` on both axes and reflect padding.

    ``size`` is an odd int (a square kernel) or a pair ``(kx, ky)`` in the order of torchvision's
    ``gaussian_blur``: ``kx`` taps along the width (columns), ``ky`` along the height (rows). So
    ``(5, 9)`` is 5 wide and 9 tall, as torchvision builds its 2-D kernel as ``k_y[:, None] * k_x``
    and pads the width by ``kx // 2``. With ``taps``, each 1-D kernel is zero-padded to that many
    taps (see :func:`gaussian_kernel`), which gives the same result and keeps the shape static
    when ``size`` is traced; by default each axis uses exactly its own size, which must be an int.
    """
    kx, ky = (size, size) if np.ndim(size) == 0 else size
    if taps is None:
        if not all(isinstance(k, int | np.integer) for k in (kx, ky)):
            raise InputError(f"size must be an odd int or a pair of them, got {size!r}; pass taps if it is traced")
        return _separable_filter(image, gaussian_kernel(ky, sigma, ky), gaussian_kernel(kx, sigma, kx))
    return _separable_filter(image, gaussian_kernel(ky, sigma, taps), gaussian_kernel(kx, sigma, taps))


def _sample(image: jax.Array, rows: jax.Array, cols: jax.Array, order: int) -> jax.Array:
    """Read ``image`` at fractional ``(rows, cols)`` for every channel; zero outside the image."""
    sample_channel = lambda channel: map_coordinates(channel, [rows, cols], order=order, mode="constant", cval=0.0)
    return jax.vmap(sample_channel, in_axes=2, out_axes=2)(image)


def _pixel_grid(image: jax.Array) -> tuple[jax.Array, jax.Array]:
    h, w = image.shape[:2]
    return jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")


def _rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hue (in turns, [0, 1)), saturation and value of an RGB image ``[..., 3]``."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.max(image, axis=-1)
    chroma = value - jnp.min(image, axis=-1)
    # The where() guards avoid 0/0 for black and grey pixels, whose hue and saturation are 0.
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
    hue_sixths = jnp.where(
        value == r,
        (g - b) / safe_chroma,
        jnp.where(value == g, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma),
    )
    hue_sixths = jnp.where(chroma > 0, hue_sixths, 0.0)
    return jnp.mod(hue_sixths / 6.0, 1.0), saturation, value


def _hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
    """Inverse of :func:`_rgb_to_hsv`, in the branch-free form ``v - v·s·clip(min(k, 4 - k), 0, 1)``.

    ``k = (n + 6·hue) mod 6`` with ``n`` = 5, 3, 1 for R, G, B; elementwise only, so it vmaps and
    compiles cheaply.
    """
    n = jnp.array([5.0, 3.0, 1.0], value.dtype).reshape((1,) * hue.ndim + (3,))
    k = jnp.mod(n + 6.0 * hue[..., None], 6.0)
    return value[..., None] * (1.0 - saturation[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# The transformations. All share the signature (key, image, params); some ignore key or params.


def flip(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Horizontal flip; deterministic."""
    del key, params
    return image[:, ::-1]


def color_jitter(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Brightness, contrast, saturation, hue, in that order, clamping to [0, 1] after each step.

    For grayscale images, only brightness and contrast apply. All four factors are drawn anyway,
    so the key is used the same way for both channel counts.
    """
    dtype = image.dtype
    ranges = (params.brightness, params.contrast, params.saturation, params.hue)
    brightness, contrast, saturation, hue_shift = _uniform(key, ranges, dtype)

    image = jnp.clip(image * brightness, 0.0, 1.0)
    mean = jnp.mean(_grayscale(image))
    image = jnp.clip(contrast * image + (1.0 - contrast) * mean, 0.0, 1.0)
    if image.shape[-1] == 1:
        return image
    image = jnp.clip(saturation * image + (1.0 - saturation) * _grayscale(image), 0.0, 1.0)
    hue, sat, value = _rgb_to_hsv(image)
    image = _hsv_to_rgb(jnp.mod(hue + hue_shift, 1.0), sat, value)
    return jnp.clip(image, 0.0, 1.0).astype(dtype)


def random_affine(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Rotation, scale and x-shear about the image centre; nearest-neighbour sampling, zero fill.

    The forward map sends the offset ``p`` from the centre ``((W-1)/2, (H-1)/2)`` to
    ``scale · R(angle) · S(shear) · p``, where ``S = [[1, -tan(shear)], [0, 1]]``; this is
    torchvision's affine matrix with no y-shear and no translation. With rows pointing down, a
    positive angle turns the image clockwise, as in torchvision's ``F.affine``. Each output pixel
    reads the input at the inverse image of its own coordinates.
    """
    angle, scale, shear = _uniform(key, (params.degrees, params.scale, params.shear))
    angle, shear = jnp.deg2rad(angle), jnp.deg2rad(shear)

    rows, cols = _pixel_grid(image)
    h, w = image.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    # Invert the forward map: S⁻¹ · R(-angle) · p / scale, with S⁻¹ = [[1, tan(shear)], [0, 1]].
    x, y = (cols - cx) / scale, (rows - cy) / scale
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x, y = cos * x + sin * y, -sin * x + cos * y
    x = x + jnp.tan(shear) * y
    return _sample(image, y + cy, x + cx, order=0)


def elastic(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Elastic deformation: bilinear sampling along a smoothed random displacement field, zero fill.

    The noise is U(-1, 1) per pixel and axis, smoothed by a Gaussian with σ = ``elastic_sigma``
    (``2·ceil(4σ)+1`` taps, reflect padding). torchvision uses ``int(8σ+1)`` taps, made odd; both
    give 41 taps at σ = 5. The smoothed noise is then multiplied by ``elastic_alpha / 2``.
    torchvision instead multiplies by ``alpha / size`` to get a displacement in [-1, 1] grid
    units, and half the size is one grid unit, so both give the same number of pixels.
    """
    h, w = image.shape[:2]
    # Drawn flat: on CPU, a multi-dimensional threefry draw takes about 3x longer to compile.
    noise = jax.random.uniform(key, (h * w * 2,), jnp.float32, minval=-1.0, maxval=1.0).reshape(h, w, 2)
    sigma = params.elastic_sigma
    if sigma > 0:
        taps = 2 * math.ceil(4 * sigma) + 1
        noise = _separable_filter(noise, gaussian_kernel(taps, sigma, taps))
    displacement = params.elastic_alpha / 2.0 * noise
    rows, cols = _pixel_grid(image)
    return _sample(image, rows + displacement[..., 0], cols + displacement[..., 1], order=1)


def blur(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Gaussian blur with the fixed ``blur_kernel_size`` kernel and σ ~ U(``blur_sigma``); reflect padding.

    This is torchvision's ``GaussianBlur(kernel_size=(5, 9), sigma=(8, 10))`` as the reference
    calls it. There ``kernel_size`` is one kernel, not a range to draw from: ``(kx, ky)`` = 5 taps
    along the width and 9 along the height. ``sigma`` is the range of one uniform draw per call,
    used for both axes. σ ≥ 8 is wide next to a 9-tap kernel, so the weights are nearly flat: the
    blur is close to a 5 × 9 box filter.
    """
    (sigma,) = _uniform(key, (params.blur_sigma,))
    return gaussian_blur(image, params.blur_kernel_size, sigma)


def invert(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """``1 - x``; deterministic."""
    del key, params
    return 1.0 - image


def color_switch(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Swap channels 0 and 1 (R and G); the identity for grayscale images."""
    del key, params
    if image.shape[-1] == 1:
        return image
    return image[..., jnp.array([1, 0, 2])]


def rotation(key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Rotation about the image centre by ±U(``rotation_degrees``); bilinear sampling, zero fill.

    The magnitude and the sign are drawn independently, so the default angle is uniform over
    [-180°, -30°] ∪ [30°, 180°]. The paper names rotation but gives no range. A small turn leaves
    the query close to the original and barely moves a trigger near the centre; the lower bound
    keeps every rotation a clear change, and ``random_affine`` already turns by any angle. With
    rows pointing down, a positive angle turns the image counter-clockwise, as in torchvision's
    ``F.rotate``; ±90° on a square image equals ``np.rot90(image, ±1)`` up to float rounding.
    """
    magnitude, coin = _uniform(key, (params.rotation_degrees, (0.0, 1.0)))
    angle = jnp.deg2rad(jnp.where(coin < 0.5, -magnitude, magnitude))

    rows, cols = _pixel_grid(image)
    h, w = image.shape[:2]
    x, y = cols - (w - 1) / 2.0, rows - (h - 1) / 2.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # The turn sends (x, y) to (cos·x + sin·y, -sin·x + cos·y); each output pixel reads its inverse image.
    return _sample(image, sin * x + cos * y + (h - 1) / 2.0, cos * x - sin * y + (w - 1) / 2.0, order=1)


TransformFn = Callable[[jax.Array, jax.Array, TransformParams], jax.Array]

TRANSFORMS: types.MappingProxyType[str, TransformFn] = types.MappingProxyType(
    {
        "flip": flip,
        "color_jitter": color_jitter,
        "random_affine": random_affine,
        "elastic": elastic,
        "blur": blur,
        "invert": invert,
        "color_switch": color_switch,
        "rotation": rotation,
    }
)
"""Name → transformation, in the order of :data:`TRANSFORM_NAMES`."""


# ---------------------------------------------------------------------------------------------
# Public entry points


def _check_names(names) -> tuple[str, ...]:
    if isinstance(names, str):
        raise InputError(f"names must be a sequence of transform names, not the string {names!r}")
    names = tuple(names)
    if not names:
        raise InputError(f"names is empty; give at least one of {TRANSFORM_NAMES}")
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise InputError(f"unknown transform name(s) {unknown}; valid names are {TRANSFORM_NAMES}")
    return names


def _check_image(image) -> jax.Array:
    image = jnp.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise InputError(
            f"expected one image [H, W, C] with C = 1 or 3, got shape {image.shape}; "
            "transform a batch with jax.vmap or use transform_batch on a single image"
        )
    if not jnp.issubdtype(image.dtype, jnp.floating):
        raise InputError(f"expected a float image in [0, 1], got dtype {image.dtype}; convert with x / 255")
    return image


def _check_params(params) -> TransformParams:
    if not isinstance(params, TransformParams):
        raise TypeError(f"params must be a TransformParams, got {type(params).__name__}")
    return params


@functools.partial(jax.jit, static_argnames=("name", "params"))
def _apply(key: jax.Array, image: jax.Array, *, name: str, params: TransformParams) -> jax.Array:
    return TRANSFORMS[name](key, image, params)


def apply_transform(name: str, key: jax.Array, image: jax.Array, params: TransformParams = DEFAULT_PARAMS) -> jax.Array:
    """Apply the transformation called ``name`` to one image ``[H, W, C]`` (jitted per name and params)."""
    (name,) = _check_names((name,))
    return _apply(key, _check_image(image), name=name, params=_check_params(params))


def usable_positions(names: Sequence[str], channels: int) -> tuple[int, ...]:
    """Positions in ``names`` that :func:`transform_batch` draws from for images with ``channels`` channels.

    Every position for RGB; for grayscale, those whose name is not in :data:`IDENTITY_ON_GRAYSCALE`.
    """
    names = _check_names(names)
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    positions = tuple(i for i, name in enumerate(names) if channels == 3 or name not in IDENTITY_ON_GRAYSCALE)
    if not positions:
        raise InputError(
            f"every name in {names} is the identity on grayscale (C = 1) images, so no query would differ "
            f"from the original; add a transformation that changes one channel, e.g. from {TRANSFORM_NAMES}"
        )
    return positions


@functools.partial(jax.jit, static_argnames=("names", "positions", "n", "params", "normalized"))
def _transform_batch(key, image, mean, std, *, names, positions, n, params, normalized):
    branches = tuple(functools.partial(TRANSFORMS[names[i]], params=params) for i in positions)
    choice_key, query_key = jax.random.split(key)
    pick = jax.random.randint(choice_key, (n,), 0, len(positions), dtype=jnp.int32)
    keys = jax.random.split(query_key, n)
    if normalized:  # per-channel constants, broadcast explicitly over the pixels
        mean, std = (jnp.reshape(c, (1,) * (image.ndim - 1) + (-1,)) for c in (mean, std))
    x = (image - mean) / std if normalized else image
    out = jax.vmap(lambda index, k: jax.lax.switch(index, branches, k, x))(pick, keys)
    choice = jnp.asarray(positions, jnp.int32)[pick]
    if normalized:
        return out * std[None] + mean[None], choice
    # Bilinear and blur weights sum to 1 only up to rounding; keep the documented [0, 1] exactly.
    return jnp.clip(out, 0.0, 1.0), choice


def transform_batch(
    key: jax.Array,
    image: jax.Array,
    names: Sequence[str] = TRANSFORM_NAMES,
    n: int = 50,
    params: TransformParams = DEFAULT_PARAMS,
    *,
    space: str = "pixel",
    mean=None,
    std=None,
) -> tuple[jax.Array, jax.Array]:
    """``n`` randomly transformed copies of one image: ``(images [n, H, W, C], choice [n] int32)``.

    Query ``i`` gets transformation ``names[choice[i]]``, with ``choice[i]`` uniform over the
    positions in ``names`` (repeating a name weights it). For a grayscale image, the positions of
    names that are identities on one channel (:data:`IDENTITY_ON_GRAYSCALE`) are left out, and a
    ``ValueError`` says so when nothing is left. With ``positions = usable_positions(names, C)``,
    keys are derived as::

        choice_key, query_key = jax.random.split(key)
        choice = positions[jax.random.randint(choice_key, (n,), 0, len(positions))]
        keys = jax.random.split(query_key, n)

    so row ``i`` is ``apply_transform(names[choice[i]], keys[i], image, params)``. For RGB images
    ``positions`` is ``range(len(names))``. In pixel space, the result is clipped to [0, 1]. The
    result is deterministic given ``key``.

    ``space="normalized"`` reproduces the reference's quirk: transform ``(image - mean) / std``
    and return the result mapped back with ``x * std + mean``, without clipping. ``mean`` and
    ``std`` are per-channel (shape ``[C]`` or scalar) and are required in that mode. They are
    ignored in pixel space. See the module docstring.
    """
    image = _check_image(image)
    names = _check_names(names)
    params = _check_params(params)
    n = operator.index(n)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if space not in SPACES:
        raise InputError(f"space must be one of {SPACES}, got {space!r}")
    normalized = space == "normalized"
    if normalized:
        if mean is None or std is None:
            raise InputError("space='normalized' needs the dataset's per-channel mean and std")
        channels = image.shape[-1]
        mean, std = (jnp.asarray(v, image.dtype) for v in (mean, std))
        for label, v in (("mean", mean), ("std", std)):
            if v.shape not in ((), (channels,)):
                raise InputError(f"{label} must be a scalar or have shape ({channels},), got {v.shape}")
    else:
        mean = std = jnp.zeros((), image.dtype)  # unused; keeps one jitted signature
    positions = usable_positions(names, image.shape[-1])
    return _transform_batch(
        key, image, mean, std, names=names, positions=positions, n=n, params=params, normalized=normalized
    )


def flip_labels(key: jax.Array, n: int, num_classes: int, target: int, distinct: bool = False) -> jax.Array:
    """``n`` random labels different from ``target``: int32 ``[n]``.

    By default, each label is uniform over the other ``num_classes - 1`` classes, independently.
    With ``distinct=True``, the labels are the first ``n`` entries of a random permutation of the
    other classes, so no label repeats; this needs ``n <= num_classes - 1``. The integers must be
    concrete (not traced), because they are checked here.
    """
    n, num_classes, target = operator.index(n), operator.index(num_classes), operator.index(target)
    if num_classes < 2:
        raise InputError(f"num_classes must be >= 2 to flip a label, got {num_classes}")
    if not 0 <= target < num_classes:
        raise InputError(f"target must be a class in [0, {num_classes - 1}], got {target}")
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if distinct:
        if n > num_classes - 1:
            raise InputError(
                f"distinct=True needs n <= num_classes - 1 = {num_classes - 1}, got n={n}; "
                "lower n or use distinct=False (labels may then repeat)"
            )
        others = jax.random.permutation(key, num_classes - 1)[:n]
    else:
        others = jax.random.randint(key, (n,), 0, num_classes - 1)
    # Shift draws from [0, C-2] past the target, so every non-target class is equally likely.
    return (others + (others >= target)).astype(jnp.int32)
