"""FreqDef: the frequency-domain backdoor detector of Zeng et al. (ICCV 2021), as a baseline.

The science
-----------
Zeng, Park, Mangal, Jia, "Rethinking the Backdoor Attacks' Triggers: A Frequency
Perspective" (ICCV 2021) observe that most backdoor triggers (patches, blended
patterns, noise, ...) leave high-frequency artefacts that natural images lack. Their
detector needs no knowledge of the attack: a small CNN (:class:`~jaxpoison.models.FreqCNN`)
is trained to tell the per-channel 2-D DCT of clean images (label 0) from the DCT of
*synthetic* triggered copies of the same images (label 1), made with five generic
trigger families (white block, noise block, Gaussian noise, shadow, blend with another
image). Every image of a possibly poisoned training set is then scored by the
detector's P(triggered) and flagged at ≥ 0.5.

Reference settings
------------------
Zeng's detector (and the PyTorch port used as a baseline in the Δ-Influence
experiments): the FreqCNN with ``w = 32`` and dropout 0.2/0.3/0.4, cross-entropy,
Adadelta with learning rate 0.05 and weight decay 1e-4, the five synthetic trigger
families drawn uniformly per image (block sides 2–7 px each, corner margin 0–5 px on
32×32 images; Gaussian noise of mean 25 and variance U(10, 70) on the 0–255 scale;
albumentations' ``RandomShadow``; ``x + 0.3·x_other`` clipped at 1), the DCT taken on
``uint8(255·x)``, several rounds of freshly generated synthetic poisons, and a decision
threshold of 0.5.

Deviations (and why)
--------------------
* **No dropout** in the network: jaxpoison's functional models carry no dropout key.
* **Shadow**: a random half-plane (bounded by a random line through the image) is
  darkened by a factor U(0.3, 0.7). This simplifies ``RandomShadow``'s random polygons
  in HLS lightness to something expressible in a few jittable array operations; it
  keeps what matters here, a large dark region with a hard edge.
* **One training loop** of ``epochs`` passes over the clean images and one triggered
  copy of each, with the triggered copies **regenerated every epoch** (a fresh family,
  size, position and noise per image and epoch) instead of Zeng's separate rounds. The
  triggers are generated on the device inside the jitted train step; the "other image"
  of the blend family is drawn from the current minibatch (itself a uniform random
  sample of the training images), so the full training set never needs to sit on the
  device. Each epoch drops its last partial minibatch (a different one every epoch).
* **DCT standardisation**: the network sees each DCT coefficient standardised by its
  per-channel, per-frequency mean and standard deviation over the training DCTs (clean
  images plus one synthetic triggered copy of each). Raw DCT coefficients span several
  orders of magnitude (the DC term dwarfs the rest); putting every input on one scale
  keeps Adadelta's steps well conditioned. The statistics are stored in the detector and
  reused at scoring time.
* **Float input by default**: the DCT is taken on the ``[0, 1]`` images, as in the
  Δ-Influence port. ``uint8_input=True`` takes it on ``round(255·x)`` instead, Zeng's
  original; the reference truncates (``astype(uint8)``), but ``k/255·255`` can land
  just below ``k`` in floating point, so rounding is what recovers the stored value.
* **Optimiser**: ``optax.chain(add_decayed_weights(wd), adadelta(lr))`` with optax's
  (= PyTorch's) Adadelta constants rho 0.9, eps 1e-6: weight decay on every parameter,
  as PyTorch's ``weight_decay`` in the port, not Keras' L2 penalty on kernels only.
  jaxpoison's :class:`~jaxpoison.training.TrainRecipe` has no Adadelta and
  :func:`~jaxpoison.training.train` takes a :class:`~jaxpoison.data.Dataset`, whose
  images must lie in ``[0, 1]`` (DCT coefficients do not), hence a dedicated loop here.
* Block sizes and margins scale with the image side: ``round(s·H/32)`` (at least 1 px
  for sizes), so 32×32 images get exactly the reference distribution.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset, Provenance, require_images
from jaxpoison.data.dct import dct2, dct_matrix, idct2  # noqa: F401 (re-exported)
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel, create_model, to_functional
from jaxpoison.training import TrainRecipe, train
from jaxpoison.training.evaluate import iterate_padded

FAMILIES = ("white_block", "noise_block", "gaussian_noise", "shadow", "blend")
"""The synthetic trigger families, in the order of their indices in :func:`apply_family`."""


# ------------------------------------------------------------- synthetic triggers


# Each trigger draws its randomness in one call: a few scalars in [0, 1) and one
# image-shaped uniform field (the noise block's values; the Gaussian family's noise via
# the normal quantile function). One threefry call instead of a dozen keeps the
# vmapped lax.switch quick to compile on CPU.
_NUM_SCALARS = 4


def _randint(u: jax.Array, low: int, high: int) -> jax.Array:
    """An integer in ``[low, high)`` from a uniform ``u`` in ``[0, 1)``."""
    return low + jnp.minimum(jnp.floor(u * (high - low)).astype(jnp.int32), high - low - 1)


def _scaled(raw: jax.Array, side: int, minimum: int) -> jax.Array:
    """``raw`` pixels of a 32-pixel side, rescaled to ``side`` pixels (rounded half up)."""
    return jnp.maximum(minimum, jnp.floor(raw * (side / 32.0) + 0.5).astype(jnp.int32))


def _block_mask(u: jax.Array, h: int, w: int) -> jax.Array:
    """A boolean ``[H, W]`` rectangle of sides 2–7 px at a random corner, margin 0–5 px (on 32 px)."""
    size_h = jnp.minimum(_scaled(_randint(u[0], 2, 8), h, 1), h)
    size_w = jnp.minimum(_scaled(_randint(u[1], 2, 8), w, 1), w)
    margin = _randint(u[2], 0, 6)
    margin_h = jnp.minimum(_scaled(margin, h, 0), h - size_h)
    margin_w = jnp.minimum(_scaled(margin, w, 0), w - size_w)
    corner = _randint(u[3], 0, 4)  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    top = jnp.where(corner < 2, margin_h, h - margin_h - size_h)
    left = jnp.where(corner % 2 == 0, margin_w, w - margin_w - size_w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    return (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)


def _white_block(u, field, image, other):
    mask = _block_mask(u, image.shape[0], image.shape[1])
    return jnp.where(mask[:, :, None], jnp.ones_like(image), image)


def _noise_block(u, field, image, other):
    mask = _block_mask(u, image.shape[0], image.shape[1])
    return jnp.where(mask[:, :, None], field.astype(image.dtype), image)


def _gaussian_noise(u, field, image, other):
    sigma = jnp.sqrt(10.0 + 60.0 * u[0]) / 255.0  # variance U(10, 70) on the 0-255 scale
    normal = jax.scipy.special.ndtri(jnp.clip(field, 1e-7, 1.0 - 1e-7))
    return jnp.clip(image + (25.0 / 255.0 + sigma * normal).astype(image.dtype), 0.0, 1.0)


def _shadow(u, field, image, other):
    h, w = image.shape[0], image.shape[1]
    # A point inside the hull of the pixel centres: both sides of any line through it hold pixels.
    row0, col0 = u[0] * (h - 1), u[1] * (w - 1)
    angle = 2.0 * math.pi * u[2]
    factor = 0.3 + 0.4 * u[3]
    rows = jnp.arange(h, dtype=jnp.float32)[:, None] - row0
    cols = jnp.arange(w, dtype=jnp.float32)[None, :] - col0
    dark = rows * jnp.cos(angle) + cols * jnp.sin(angle) > 0
    return jnp.where(dark[:, :, None], image * factor.astype(image.dtype), image)


def _blend(u, field, image, other):
    return jnp.clip(image + 0.3 * other, 0.0, 1.0)


_FAMILY_FNS = (_white_block, _noise_block, _gaussian_noise, _shadow, _blend)


def apply_family(family_index: int | jax.Array, key: jax.Array, image: jax.Array, other: jax.Array) -> jax.Array:
    """Apply trigger family ``family_index`` (an index into :data:`FAMILIES`) to one ``[H, W, C]`` image.

    Args:
      family_index: 0 white block, 1 uniform-noise block, 2 Gaussian noise, 3 shadow,
        4 blend with ``other``; may be traced (``lax.switch``; out-of-range indices clamp).
      key: randomness of the trigger (size, position, noise, ...).
      image: the ``[H, W, C]`` image in ``[0, 1]``.
      other: another ``[H, W, C]`` image in ``[0, 1]``, used by the blend family only.

    Returns:
      The triggered image, same shape and dtype, in ``[0, 1]``.
    """
    image = jnp.asarray(image)
    if image.ndim != 3:
        raise InputError(f"apply_family takes one [H, W, C] image; got shape {image.shape}.")
    other = jnp.asarray(other, image.dtype)
    u = jax.random.uniform(key, (_NUM_SCALARS + image.size,))
    field = u[_NUM_SCALARS:].reshape(image.shape)
    return jax.lax.switch(family_index, _FAMILY_FNS, u[:_NUM_SCALARS], field, image, other)


def _one_trigger(key, image, pool):
    k_choice, k_trigger = jax.random.split(key)
    u = jax.random.uniform(k_choice, (2,))
    family = _randint(u[0], 0, len(FAMILIES))
    other = pool[_randint(u[1], 0, pool.shape[0])]
    return apply_family(family, k_trigger, image, other), family


@jax.jit
def _synthetic_triggers(key, images, other_images):
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(_one_trigger, in_axes=(0, 0, None))(keys, images, other_images)


def synthetic_triggers(
    key: jax.Array, images: jax.Array, other_images: jax.Array, *, return_families: bool = False
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """A synthetic triggered copy of every image, each with a family drawn uniformly from :data:`FAMILIES`.

    Deterministic per ``key``. Jittable, and vmappable over extra leading axes (e.g. a
    batch of keys); the per-image work is itself a ``vmap`` of :func:`apply_family`.

    Args:
      key: a JAX PRNG key.
      images: ``[N, H, W, C]`` images in ``[0, 1]``.
      other_images: ``[M, H, W, C]`` (``M ≥ 1``) images in ``[0, 1]``; the blend family
        adds 0.3 times one of them, drawn uniformly (it may be the image itself).
      return_families: also return the family index ``[N]`` int32 used for each image.

    Returns:
      The ``[N, H, W, C]`` triggered images (and the family indices if asked).
    """
    images = jnp.asarray(images)
    other_images = jnp.asarray(other_images, images.dtype)
    if images.ndim != 4 or other_images.ndim != 4 or images.shape[1:] != other_images.shape[1:]:
        raise InputError(
            f"synthetic_triggers needs [N, H, W, C] images and [M, H, W, C] other images of the same image shape; "
            f"got {images.shape} and {other_images.shape}."
        )
    if other_images.shape[0] < 1:
        raise InputError("synthetic_triggers needs at least one other image (the blend family draws from them).")
    out, families = _synthetic_triggers(key, images, other_images)
    return (out, families) if return_families else out


# ----------------------------------------------------------------------- detector


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@dataclasses.dataclass(frozen=True)
class FreqDefConfig:
    """How the FreqDef detector is trained and applied.

    Attributes:
      width: channels of the FreqCNN's first convolutions (32 in the reference).
      epochs: passes over the clean images and their (freshly regenerated) triggered copies.
      batch_size: minibatch size (clean and triggered examples together).
      learning_rate: Adadelta learning rate (0.05 in the reference).
      weight_decay: weight decay added to the gradient before Adadelta (PyTorch's
        ``weight_decay``; 1e-4 in the reference). 0 disables it.
      max_train: use at most this many clean images (a seeded random subset); ``None`` uses all.
      threshold: flag an image when its P(triggered) is ≥ this.
      seed: seeds the initialisation, the subset, the minibatch order and the triggers.
      uint8_input: take the DCT of ``round(255·x)`` (Zeng's original) instead of ``x``.
    """

    width: int = 32
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.05
    weight_decay: float = 1e-4
    max_train: int | None = None
    threshold: float = 0.5
    seed: int = 0
    uint8_input: bool = False

    def __post_init__(self):
        for name in ("width", "epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InputError(f"FreqDefConfig.{name} must be an integer ≥ 1; got {value!r}.")
        if not (isinstance(self.learning_rate, int | float) and math.isfinite(self.learning_rate)) or (
            self.learning_rate <= 0
        ):
            raise InputError(f"FreqDefConfig.learning_rate must be a positive number; got {self.learning_rate!r}.")
        if not (isinstance(self.weight_decay, int | float) and math.isfinite(self.weight_decay)) or (
            self.weight_decay < 0
        ):
            raise InputError(
                f"FreqDefConfig.weight_decay must be a non-negative number (0 disables it); got {self.weight_decay!r}."
            )
        if self.max_train is not None and (not _is_int(self.max_train) or self.max_train < 1):
            raise InputError(
                f"FreqDefConfig.max_train must be None (use every clean image) or an integer ≥ 1; "
                f"got {self.max_train!r}."
            )
        if not isinstance(self.threshold, int | float) or not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"FreqDefConfig.threshold is a probability in [0, 1]; got {self.threshold!r}.")
        if not _is_int(self.seed):
            raise InputError(f"FreqDefConfig.seed must be an integer; got {self.seed!r}.")
        if not isinstance(self.uint8_input, bool | np.bool_):
            raise InputError(f"FreqDefConfig.uint8_input must be True or False; got {self.uint8_input!r}.")

    def replace(self, **changes) -> FreqDefConfig:
        return dataclasses.replace(self, **changes)


class FreqDetector(NamedTuple):
    """A trained FreqDef detector.

    Attributes:
      model: the FreqCNN as a functional model, holding the trained ``params``/``state``.
      dct_mean, dct_std: ``[H, W, C]`` per-frequency standardisation of the DCT inputs.
      config: the configuration it was trained with.
      image_shape: ``(H, W, C)`` of the images it was trained on (and can score).
      history: one dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``
        (clean-vs-triggered, on the epoch's minibatches, in training mode) and ``seconds``.
      num_clean: the number of clean images it was trained on.
    """

    model: FunctionalModel
    dct_mean: np.ndarray
    dct_std: np.ndarray
    config: FreqDefConfig
    image_shape: tuple[int, int, int]
    history: list[dict]
    num_clean: int


def _frequencies(x: jax.Array, uint8_input: bool) -> jax.Array:
    return dct2(jnp.round(x * 255.0) if uint8_input else x)


@partial(jax.jit, static_argnames=("uint8_input",))
def _batch_moments(x, uint8_input):
    """Per-frequency mean and summed squared deviation of a batch's DCTs."""
    z = _frequencies(x, uint8_input)
    mean = z.mean(axis=0)
    return mean, jnp.sum(jnp.square(z - mean[None]), axis=0)


def _dct_statistics(key, images: np.ndarray, batch_size: int, uint8_input: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training DCTs (clean images + one triggered copy), merged over batches in float64."""
    count, mean, m2 = 0, None, None
    for b, start in enumerate(range(0, len(images), batch_size)):
        x = jnp.asarray(images[start : start + batch_size])
        x = jnp.concatenate([x, synthetic_triggers(jax.random.fold_in(key, b), x, x)])
        batch_mean, batch_m2 = (np.asarray(a, np.float64) for a in _batch_moments(x, uint8_input))
        n_b = x.shape[0]
        if mean is None:
            count, mean, m2 = n_b, batch_mean, batch_m2
            continue
        delta = batch_mean - mean
        total = count + n_b
        mean = mean + delta * (n_b / total)
        m2 = m2 + batch_m2 + np.square(delta) * (count * n_b / total)
        count = total
    std = np.sqrt(m2 / count)
    # Frequencies that never vary would divide by ~0; give them a typical scale instead.
    typical = float(np.sqrt(np.mean(np.square(std))))
    if typical == 0.0:
        typical = 1.0
    std = np.where(std > 1e-6 * typical, std, typical)
    return mean.astype(np.float32), std.astype(np.float32)


def _make_train_step(optimizer, mean, std, uint8_input: bool):
    """``(model, opt_state, key, x, y) -> (model, opt_state, loss, correct)`` on standardised DCTs.

    The detector's input transform (DCT, then standardisation per frequency) is its own, so
    its network carries no normalisation of its own.
    """
    mean = jnp.asarray(mean)
    std = jnp.asarray(std)

    def loss_fn(params, model, z, y):
        logits, new_state = model.replace(params=params).train_logits(z)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, logits)

    def step(model, opt_state, key, x, y):
        # Label-1 rows get a fresh synthetic trigger; their blend partner comes from the batch.
        triggered = synthetic_triggers(key, x, x)
        x = jnp.where((y == 1)[:, None, None, None], triggered, x)
        z = (_frequencies(x, uint8_input) - mean[None]) / std[None]
        (loss, (state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(model.params, model, z, y)
        updates, opt_state = optimizer.update(grads, opt_state, model.params)
        model = model.replace(params=optax.apply_updates(model.params, updates), state=state)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return model, opt_state, loss, correct

    return jax.jit(step, donate_argnums=(0, 1))


def _check_images(images, expected_shape: tuple[int, int, int] | None, what: str) -> np.ndarray:
    if isinstance(images, Dataset):
        require_images(images, "FreqDef")
    images = np.asarray(images.images if isinstance(images, Dataset) else images)
    if images.ndim != 4:
        raise InputError(f"The {what} must be a 4-D NHWC array [N, H, W, C]; got shape {images.shape}.")
    if images.shape[0] == 0:
        raise InputError(f"The {what} are empty; FreqDef needs at least one image.")
    if expected_shape is not None and tuple(images.shape[1:]) != tuple(expected_shape):
        raise InputError(
            f"The {what} have shape {tuple(images.shape[1:])} but the detector was trained on images of shape "
            f"{tuple(expected_shape)}; train a detector on clean images of this shape (or resize the images)."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"The {what} must be floating point in [0, 1]; got dtype {images.dtype}.")
    images = images.astype(np.float32, copy=False)
    if not np.all((images >= 0.0) & (images <= 1.0)):  # written so that NaN fails too
        raise InputError(
            f"The {what} must be finite pixel-space images in [0, 1]; got range [{np.nanmin(images):.3g}, "
            f"{np.nanmax(images):.3g}]{' with NaN' if np.isnan(images).any() else ''}."
        )
    return images


def train_freqdef(clean: Dataset, config: FreqDefConfig | None = None, *, progress: bool = True) -> FreqDetector:
    """Train a FreqDef detector on clean images and synthetic triggered copies of them.

    Every epoch visits each clean image twice, once as itself (label 0) and once with a
    freshly drawn synthetic trigger (label 1), in a random order; the network sees the
    standardised DCT. The optimiser is Adadelta with weight decay, BatchNorm runs in
    training mode.

    Args:
      clean: the clean images (labels are ignored). Only their pixels are used.
      config: the settings (default :class:`FreqDefConfig`).
      progress: show a progress bar.

    Returns:
      The trained :class:`FreqDetector`.

    Raises:
      ValueError: an empty dataset, or a batch larger than the ``2·N`` training examples.
    """
    config = FreqDefConfig() if config is None else config
    images = _check_images(clean, None, "clean images")
    rng = np.random.default_rng(config.seed)
    if config.max_train is not None and config.max_train < len(images):
        images = images[np.sort(rng.choice(len(images), config.max_train, replace=False))]
    n = len(images)
    if config.batch_size > 2 * n:
        raise InputError(
            f"batch_size {config.batch_size} exceeds the {2 * n} training examples ({n} clean images and a "
            f"triggered copy of each); lower FreqDefConfig.batch_size or use more clean images."
        )
    image_shape = tuple(int(s) for s in images.shape[1:])
    base_key = jax.random.key(config.seed)
    dct_mean, dct_std = _dct_statistics(jax.random.fold_in(base_key, 0), images, 1024, config.uint8_input)

    model = to_functional(create_model("freq_cnn", image_shape, 2, seed=config.seed, width=config.width))
    optimizer = optax.adadelta(config.learning_rate)
    if config.weight_decay:
        optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay), optimizer)
    # The library's one training loop, over 2·N rows: row r < N is clean image r (label 0), row N + r
    # its triggered copy (label 1, the trigger drawn afresh inside the step). The detector's DCT front
    # end is its own step; its order and keys come from the detector's seed.
    channels = image_shape[-1]
    pairs = Dataset(np.concatenate([images, images]), np.repeat(np.arange(2, dtype=np.int32), n),
                    ("clean", "triggered"), np.zeros(channels), np.ones(channels),
                    Provenance("freqdef", "clean+triggered", "train"))  # fmt: skip
    recipe = TrainRecipe(epochs=config.epochs, batch_size=config.batch_size)
    result = train(model, pairs, recipe, seed=config.seed, progress=progress,
                   step_fn=_make_train_step(optimizer, dct_mean, dct_std, config.uint8_input), optimizer=optimizer,
                   order=lambda epoch: rng.permutation(2 * n), key=jax.random.fold_in(base_key, 1),
                   desc="FreqDef detector")  # fmt: skip
    model = result.model
    history = [{k: h[k] for k in ("epoch", "train_loss", "train_accuracy", "seconds")} for h in result.history]
    return FreqDetector(
        model=model,
        dct_mean=dct_mean,
        dct_std=dct_std,
        config=config,
        image_shape=image_shape,
        history=history,
        num_clean=n,
    )


@partial(jax.jit, static_argnames=("uint8_input",))
def _poison_probability(model, x, mean, std, uint8_input):
    frequencies = _frequencies(x, uint8_input)
    z = (frequencies - jnp.broadcast_to(mean, frequencies.shape)) / jnp.broadcast_to(std, frequencies.shape)
    return jax.nn.softmax(model(z).astype(jnp.float32), axis=-1)[:, 1]


def freqdef_scores(detector: FreqDetector, images: np.ndarray | Dataset, *, batch_size: int = 1024) -> np.ndarray:
    """P(triggered) ``[N]`` (float32, in ``[0, 1]``) of each image under the detector.

    Runs in fixed-size batches (the last one padded), so the network compiles once per
    batch size.

    Raises:
      ValueError: no images, images of another shape than the detector was trained on,
        or images outside ``[0, 1]``.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be ≥ 1; got {batch_size}.")
    images = _check_images(images, detector.image_shape, "images to score")
    n = len(images)
    mean, std = jnp.asarray(detector.dct_mean), jnp.asarray(detector.dct_std)
    out = []
    for idx, valid in iterate_padded(n, min(batch_size, n)):
        p = _poison_probability(detector.model, jnp.asarray(images[idx]), mean, std, detector.config.uint8_input)
        out.append(np.asarray(p)[valid])
    return np.concatenate(out).astype(np.float32)


def freqdef_detect(
    detector: FreqDetector, dataset: Dataset | np.ndarray, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Score every image of ``dataset`` and flag those with P(triggered) ≥ ``detector.config.threshold``.

    Returns:
      ``(flagged, scores)``: the flagged indices (int64, increasing) and the ``[N]`` scores.
    """
    scores = freqdef_scores(detector, dataset, batch_size=batch_size)
    return np.flatnonzero(scores >= detector.config.threshold).astype(np.int64), scores
