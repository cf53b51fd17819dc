"""Backdoor triggers as pure functions of pixel-space images ``[..., H, W, C]`` in [0, 1].

* :class:`PatchTrigger` — ``x' = x·(1 − m) + p·m`` for a mask ``m`` and a pattern ``p``
  (BadNet-style patches: the Δ-Influence 4-pixel pattern, solid squares in a corner).
* :class:`BlendedTrigger` — ``x' = (1 − ε)·x + ε·t``, ε the blend ratio (the IFS
  "manipulation strength" of blended attacks).
* :class:`PatchedTrigger` — ``x' = clip(x + (ε/255)·p·m, 0, 1)``: a patch *added* with
  amplitude ε on the 0–255 scale (the IFS "manipulation strength" of patched attacks; ε = 2
  moves no pixel by more than 2/255, nearly invisible).

:func:`apply_trigger` applies any trigger the way the poisoned-set builder, the selection
methods and the attack metrics do: image triggers are clipped to [0, 1]; triggers of other
data (the point-cloud trigger of :mod:`jaxpoison.attacks.pointcloud`) are not.

Triggers are frozen dataclasses holding NumPy arrays; ``apply`` works on NumPy or
JAX arrays, batched or not, and is jittable.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.errors import InputError


class TriggerError(InputError):
    """A trigger does not fit the images or has invalid parameters."""


def _check_shape(image_shape) -> tuple[int, int, int]:
    if len(image_shape) != 3:
        raise TriggerError(f"image_shape must be (H, W, C); got {image_shape!r}.")
    return tuple(int(v) for v in image_shape)  # type: ignore[return-value]


def _leading(constant, images):
    """``constant`` (one image's mask or pattern) with leading unit axes to match a batch of ``images``."""
    return constant.reshape((1,) * (images.ndim - constant.ndim) + constant.shape)


class Trigger:
    """Shared behaviour: a trigger is built for one image shape (that of its ``pattern``)
    and ``apply`` checks the images match before calling ``transform``."""

    pattern: np.ndarray
    data_kind = "image"  # what it applies to: "image" (clipped to [0, 1]) or "points"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pattern.shape)  # type: ignore[return-value]

    def apply(self, images):
        """Triggered images (JAX arrays), same shape as ``images`` (one image or a batch)."""
        _check_fits(self.image_shape, images)
        return self.transform(jnp.asarray(images))

    def transform(self, images: jax.Array) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class PatchTrigger(Trigger):
    """Paste ``pattern`` where ``mask`` is 1 (``mask`` may be fractional for soft edges).

    Attributes:
      mask: ``[H, W, 1]`` or ``[H, W, C]`` in [0, 1].
      pattern: ``[H, W, C]`` in [0, 1].
      name: a label for manifests.
    """

    mask: np.ndarray
    pattern: np.ndarray
    name: str = "patch"

    def __post_init__(self):
        mask, pattern = np.asarray(self.mask, np.float32), np.asarray(self.pattern, np.float32)
        if pattern.ndim != 3 or mask.ndim != 3 or mask.shape[:2] != pattern.shape[:2]:
            raise TriggerError(f"mask {mask.shape} and pattern {pattern.shape} must be [H, W, 1 or C] and [H, W, C].")
        if mask.shape[2] not in (1, pattern.shape[2]):
            raise TriggerError(f"mask has {mask.shape[2]} channels; use 1 or the pattern's {pattern.shape[2]}.")
        for name, a in (("mask", mask), ("pattern", pattern)):
            if not np.all((a >= 0) & (a <= 1)):  # written so that NaN fails too
                raise TriggerError(f"{name} values must be finite and lie in [0, 1]; got [{np.nanmin(a)}, "
                                   f"{np.nanmax(a)}]{' with NaN' if np.isnan(a).any() else ''}.")  # fmt: skip
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "pattern", pattern)

    def transform(self, images):
        mask, pattern = _leading(self.mask, images), _leading(self.pattern, images)
        return images * (1.0 - mask) + pattern * mask

    def describe(self) -> dict:
        return {"type": "patch", "name": self.name, "pixels": int((self.mask.max(-1) > 0).sum())}


@dataclasses.dataclass(frozen=True, eq=False)
class BlendedTrigger(Trigger):
    """``x' = (1 − ε)·x + ε·pattern``.

    Attributes:
      pattern: ``[H, W, C]`` in [0, 1].
      epsilon: blend ratio in [0, 1] (0: no change; 1: the pattern itself).
      name: a label for manifests.
    """

    pattern: np.ndarray
    epsilon: float
    name: str = "blended"

    def __post_init__(self):
        pattern = np.asarray(self.pattern, np.float32)
        if pattern.ndim != 3:
            raise TriggerError(f"pattern must be [H, W, C]; got {pattern.shape}.")
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise TriggerError(f"blend ratio epsilon must lie in [0, 1]; got {self.epsilon}.")
        if not np.all((pattern >= 0) & (pattern <= 1)):  # written so that NaN fails too
            raise TriggerError("pattern values must be finite and lie in [0, 1].")
        object.__setattr__(self, "pattern", pattern)

    def transform(self, images):
        return (1.0 - self.epsilon) * images + self.epsilon * _leading(self.pattern, images)

    def describe(self) -> dict:
        return {"type": "blended", "name": self.name, "epsilon": float(self.epsilon)}


@dataclasses.dataclass(frozen=True, eq=False)
class PatchedTrigger(Trigger):
    """``x' = clip(x + (ε/255)·pattern·mask, 0, 1)``: a patch added with amplitude ε (0–255 scale).

    Unlike :class:`PatchTrigger`, which pastes a patch over the image, this one adds a signed
    pattern of amplitude ε, so no pixel moves by more than ε/255 (the IFS paper's
    "manipulation strength" of its patched attack: ε = 2 is nearly invisible).

    Attributes:
      mask: ``[H, W, 1]`` or ``[H, W, C]`` in [0, 1] (1 inside the patch).
      pattern: ``[H, W, C]`` in [-1, 1]: the sign (and relative size) of each pixel's change.
      epsilon: amplitude on the 0–255 pixel scale, in (0, 255].
      name: a label for manifests.
    """

    mask: np.ndarray
    pattern: np.ndarray
    epsilon: float
    name: str = "patched"

    def __post_init__(self):
        mask, pattern = np.asarray(self.mask, np.float32), np.asarray(self.pattern, np.float32)
        if pattern.ndim != 3 or mask.ndim != 3 or mask.shape[:2] != pattern.shape[:2]:
            raise TriggerError(f"mask {mask.shape} and pattern {pattern.shape} must be [H, W, 1 or C] and [H, W, C].")
        if mask.shape[2] not in (1, pattern.shape[2]):
            raise TriggerError(f"mask has {mask.shape[2]} channels; use 1 or the pattern's {pattern.shape[2]}.")
        if not np.all((mask >= 0) & (mask <= 1)):  # written so that NaN fails too
            raise TriggerError("mask values must be finite and lie in [0, 1].")
        if not np.all((pattern >= -1) & (pattern <= 1)):
            raise TriggerError("pattern values must be finite and lie in [-1, 1] (the sign of each pixel's change).")
        _check_epsilon(self.epsilon)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "epsilon", float(self.epsilon))

    def transform(self, images):
        delta = jnp.asarray((self.epsilon / 255.0) * (self.pattern * self.mask), images.dtype)
        return jnp.clip(images + jnp.broadcast_to(delta, images.shape), 0.0, 1.0)

    def describe(self) -> dict:
        return {"type": "patched", "name": self.name, "epsilon": self.epsilon,
                "pixels": int((self.mask.max(-1) > 0).sum())}  # fmt: skip


def _check_epsilon(epsilon) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise TriggerError(f"the patched attack's epsilon is a pixel amplitude on the 0-255 scale; got {epsilon!r}.")
    if not 0.0 < float(epsilon) <= 255.0:  # NaN fails this too
        raise TriggerError(f"the patched attack's epsilon must lie in (0, 255] (0-255 pixel scale, e.g. 2); "
                           f"got {epsilon}.")  # fmt: skip


def trigger_kind(trigger) -> str:
    """What data ``trigger`` applies to: ``"image"`` (the default) or ``"points"``."""
    return getattr(trigger, "data_kind", "image")


def apply_trigger(trigger, inputs) -> np.ndarray:
    """``trigger.apply(inputs)`` as float32 NumPy; image triggers' outputs are clipped to [0, 1].

    Args:
      trigger: any jaxpoison trigger (``apply`` and ``describe``).
      inputs: a batch of images ``[N, H, W, C]`` (or point clouds ``[N, P, 3]`` for a point trigger).

    Returns:
      The triggered batch, same shape.
    """
    out = np.asarray(trigger.apply(inputs), np.float32)
    return np.clip(out, 0.0, 1.0) if trigger_kind(trigger) == "image" else out


def _check_fits(shape, images) -> None:
    if tuple(np.shape(images)[-3:]) != tuple(shape):
        raise TriggerError(
            f"the trigger is made for {tuple(shape)} images but got images of shape {tuple(np.shape(images)[-3:])}; "
            "build the trigger for the dataset's image_shape."
        )


# --------------------------------------------------------------------------- presets


def _pixel_block(image_shape) -> int:
    # One trigger "pixel" of the 32×32 reference becomes an s×s block on larger images.
    return max(1, round(min(image_shape[:2]) / 32))


def badnet_pixels(image_shape, value: float = 0.0) -> PatchTrigger:
    """The Δ-Influence BadNet trigger: 4 black pixels near the bottom-right corner.

    At 32×32 they sit at (row, col) = (28, 30), (29, 29), (30, 28), (30, 30); i.e. at
    offsets (−4, −2), (−3, −3), (−2, −4), (−2, −2) from the bottom-right corner. Larger
    images scale each pixel to an ``s×s`` block with ``s = round(min(H, W) / 32)``.

    ``value`` is the pixels' intensity: 0 (black) is the reference; on datasets with a
    black background (MNIST, Fashion-MNIST) black pixels are invisible — on Fashion-MNIST
    at 1 % poisons they give ASR 0.009 — so use ``value=1.0`` there.
    """
    h, w, c = _check_shape(image_shape)
    s = _pixel_block(image_shape)
    if h < 4 * s or w < 4 * s:
        raise TriggerError(f"the BadNet pixel trigger needs images of at least {4 * s}×{4 * s}; got {h}×{w}.")
    mask = np.zeros((h, w, 1), np.float32)
    for dr, dc in ((-4, -2), (-3, -3), (-2, -4), (-2, -2)):
        r, q = h + dr * s, w + dc * s
        mask[r : r + s, q : q + s] = 1.0
    if not 0.0 <= value <= 1.0:
        raise TriggerError(f"value must lie in [0, 1]; got {value}.")
    return PatchTrigger(mask, np.full((h, w, c), value, np.float32), name=f"badnet-4px-{value:g}")


CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def square_patch(image_shape, size: int = 3, color=(1.0, 1.0, 0.0), corner: str = "bottom-right",
                 margin: int = 1) -> PatchTrigger:  # fmt: skip
    """A solid ``size×size`` square of ``color`` in a corner, ``margin`` pixels from the edges.

    ``color`` has one value per channel (RGB); for grayscale images its mean is used.
    E.g. ``square_patch((32, 32, 3), 5, (1, 1, 0), margin=1)`` is the 5×5 yellow patch at rows
    and columns 26–30.
    """
    h, w, c = _check_shape(image_shape)
    if corner not in CORNERS:
        raise TriggerError(f"unknown corner {corner!r}; choose one of {', '.join(CORNERS)}.")
    if size < 1 or margin < 0 or size + margin > min(h, w):
        raise TriggerError(f"a {size}×{size} patch with margin {margin} does not fit {h}×{w} images.")
    color = np.asarray(color, np.float32).reshape(-1)
    if color.size == 1:
        color = np.repeat(color, c)
    elif c == 1:
        color = color.mean(keepdims=True)
    if color.size != c:
        raise TriggerError(f"color has {color.size} values for {c}-channel images.")
    top = margin if corner.startswith("top") else h - margin - size
    left = margin if corner.endswith("left") else w - margin - size
    mask = np.zeros((h, w, 1), np.float32)
    mask[top : top + size, left : left + size] = 1.0
    return PatchTrigger(mask, np.broadcast_to(color, (h, w, c)).copy(), name=f"square-{size}px-{corner}")


PATCH_PATTERNS = ("checkerboard", "solid", "random")
PATCH_POSITIONS = (*CORNERS, "center")


def _patch_box(h: int, w: int, size, position, margin: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a patch, or a :class:`TriggerError` saying why it does not fit."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        ph = pw = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        ph, pw = (int(v) for v in size)
    else:
        raise TriggerError(f"patch size must be an integer or (height, width); got {size!r}.")
    if ph < 1 or pw < 1:
        raise TriggerError(f"patch size must be at least 1×1; got {ph}×{pw}.")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise TriggerError(f"margin must be an integer ≥ 0; got {margin!r}.")
    if isinstance(position, str):
        if position not in PATCH_POSITIONS:
            raise TriggerError(f"unknown patch position {position!r}; choose one of {', '.join(PATCH_POSITIONS)} "
                               "or give (row, col) of its top-left pixel.")  # fmt: skip
        if position == "center":
            if ph > h or pw > w:
                raise TriggerError(f"a {ph}×{pw} patch does not fit {h}×{w} images; make it smaller.")
            return (h - ph) // 2, (w - pw) // 2, ph, pw
        if ph + margin > h or pw + margin > w:
            raise TriggerError(f"a {ph}×{pw} patch with margin {margin} does not fit {h}×{w} images; make it "
                               "smaller or lower the margin.")  # fmt: skip
        top = margin if position.startswith("top") else h - margin - ph
        left = margin if position.endswith("left") else w - margin - pw
        return top, left, ph, pw
    if not (isinstance(position, (tuple, list)) and len(position) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in position)):  # fmt: skip
        raise TriggerError(f"patch position must be a corner name, 'center' or (row, col); got {position!r}.")
    top, left = (int(v) for v in position)
    if top < 0 or left < 0 or top + ph > h or left + pw > w:
        raise TriggerError(f"a {ph}×{pw} patch at (row, col) = ({top}, {left}) does not fit {h}×{w} images: it "
                           f"must lie in rows 0–{h - 1} and columns 0–{w - 1}.")  # fmt: skip
    return top, left, ph, pw


def _patch_pattern(pattern, ph: int, pw: int, c: int, seed: int) -> np.ndarray:
    """The ``[ph, pw, C]`` signed pattern of a patched trigger."""
    if isinstance(pattern, str):
        if pattern == "checkerboard":  # +1 / −1 alternating, +1 in the top-left pixel
            rows, cols = np.indices((ph, pw))
            board = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
            return np.repeat(board[..., None], c, axis=-1).astype(np.float32)
        if pattern == "solid":
            return np.ones((ph, pw, c), np.float32)
        if pattern == "random":
            return np.random.default_rng(seed).choice([-1.0, 1.0], (ph, pw, c)).astype(np.float32)
        raise TriggerError(f"unknown patch pattern {pattern!r}; choose one of {', '.join(PATCH_PATTERNS)} or pass "
                           "an array in [-1, 1].")  # fmt: skip
    array = np.asarray(pattern, np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], c, axis=-1)
    if array.shape != (ph, pw, c):
        raise TriggerError(f"a pattern array must be [{ph}, {pw}] or [{ph}, {pw}, {c}] for this patch; got "
                           f"{array.shape}.")  # fmt: skip
    return array


def parse_position(text: str):
    """A patch position from text: a corner name, ``"center"``, or ``"ROW,COL"`` (the top-left pixel).

    Raises:
      TriggerError: anything else.
    """
    text = str(text).strip()
    if text in PATCH_POSITIONS:
        return text
    parts = text.split(",")
    try:
        row, col = (int(v) for v in parts)
    except ValueError:
        choices = ", ".join(PATCH_POSITIONS)
        raise TriggerError(f"a patch position is one of {choices} or ROW,COL; got {text!r}.") from None
    return row, col


def patched(image_shape, epsilon: float, size=None, position="bottom-right", pattern="checkerboard",
            margin: int = 1, seed: int = 0) -> PatchedTrigger:  # fmt: skip
    """The patched attack with manipulation strength ``epsilon``: a patch added at amplitude ε/255.

    Args:
      image_shape: ``(H, W, C)`` of the images.
      epsilon: amplitude on the 0–255 scale, in (0, 255]; ε = 2 changes no pixel by more than 2/255.
      size: patch side in pixels, or ``(height, width)``. Default ``3·s`` with ``s = round(min(H, W) / 32)``
        (3×3 at 32×32, 21×21 at 224×224): the 3-pixel patch of the 32×32 references, scaled.
      position: ``"bottom-right"`` (default), ``"bottom-left"``, ``"top-right"``, ``"top-left"`` (each
        ``margin`` pixels from the edges), ``"center"``, or ``(row, col)`` of the patch's top-left pixel.
      pattern: ``"checkerboard"`` (±1 alternating; default), ``"solid"`` (+1: a brighter square),
        ``"random"`` (±1 drawn from ``seed``), or an array ``[h, w]`` / ``[h, w, C]`` in [-1, 1].
      margin: distance from the edges for a corner position.
      seed: seeds the ``"random"`` pattern.

    Returns:
      A :class:`PatchedTrigger`.

    Raises:
      TriggerError: a patch that does not fit the images (the message gives sizes and bounds), an
        unknown position or pattern, or ε outside (0, 255].
    """
    h, w, c = _check_shape(image_shape)
    _check_epsilon(epsilon)
    size = 3 * _pixel_block(image_shape) if size is None else size
    top, left, ph, pw = _patch_box(h, w, size, position, margin)
    mask = np.zeros((h, w, 1), np.float32)
    mask[top : top + ph, left : left + pw] = 1.0
    full = np.zeros((h, w, c), np.float32)
    full[top : top + ph, left : left + pw] = _patch_pattern(pattern, ph, pw, c, seed)
    where = position if isinstance(position, str) else f"{top},{left}"
    label = pattern if isinstance(pattern, str) else "custom"
    return PatchedTrigger(mask, full, float(epsilon), name=f"patched-{ph}x{pw}-{where}-{label}")


def default_blend_pattern(image_shape, seed: int = 0) -> np.ndarray:
    """A deterministic, licence-clean blend pattern made by code: coloured diagonal waves.

    Each channel is a sum of two sinusoidal gratings with frequencies and phases drawn
    from ``seed``; values are rescaled to [0, 1]. High enough in contrast to be learnable
    at small blend ratios, unlike a flat colour.
    """
    h, w, c = _check_shape(image_shape)
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    channels = []
    for _ in range(c):
        f1, f2 = rng.uniform(2, 6, 2), rng.uniform(2, 6, 2)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        wave = np.sin(2 * np.pi * (f1[0] * xx + f1[1] * yy) + p1) + np.sin(2 * np.pi * (f2[0] * xx - f2[1] * yy) + p2)
        channels.append((wave - wave.min()) / (wave.max() - wave.min()))
    return np.stack(channels, axis=-1).astype(np.float32)


def resize_pattern(image: np.ndarray, image_shape) -> np.ndarray:
    """Resize a user trigger image ``[h, w, C]`` (uint8 or [0, 1]) to ``image_shape`` (bilinear)."""
    h, w, c = _check_shape(image_shape)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise TriggerError(f"a trigger image must be [h, w, C]; got {image.shape}.")
    if image.shape[-1] != c:
        raise TriggerError(
            f"the trigger image has {image.shape[-1]} channels but the dataset's images have {c}; "
            "convert it (e.g. to grayscale or RGB) first."
        )
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    return np.clip(np.asarray(jax.image.resize(image, (h, w, c), "bilinear")), 0.0, 1.0)


def blended(image_shape, epsilon: float, pattern: np.ndarray | None = None, seed: int = 0) -> BlendedTrigger:
    """A blended trigger with the default pattern, or ``pattern`` resized to the images."""
    t = default_blend_pattern(image_shape, seed) if pattern is None else resize_pattern(pattern, image_shape)
    return BlendedTrigger(t, epsilon, name="blended-default" if pattern is None else "blended-image")
