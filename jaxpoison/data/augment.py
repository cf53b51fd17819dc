"""Data augmentation and normalisation as pure, keyed JAX functions.

Each function transforms **one** image ``[H, W, C]`` and is meant to be batched
with ``jax.vmap`` over images and keys; :func:`augment_batch` does exactly that.
All are jittable and deterministic given the key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """``(images - mean) / std`` with per-channel constants (broadcast over the last axis)."""
    shape = (1,) * (images.ndim - 1) + (-1,)
    return (images - jnp.asarray(mean, images.dtype).reshape(shape)) / jnp.asarray(std, images.dtype).reshape(shape)


def random_crop(key: jax.Array, image: jax.Array, padding: int) -> jax.Array:
    """Zero-pad by ``padding`` pixels on every side, then crop back at a random offset.

    This is the standard "pad 4 + random crop" of CIFAR training: a random shift of
    up to ``padding`` pixels in each direction, with zeros shifted in.
    """
    if padding == 0:
        return image
    h, w, c = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
    """Flip left-right with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1, :], image)


def random_vflip(key: jax.Array, image: jax.Array) -> jax.Array:
    """Flip upside-down with probability 1/2 (the Δ-Influence reference's CIFAR augmentation)."""
    return jnp.where(jax.random.bernoulli(key), image[::-1, :, :], image)


def augment(key: jax.Array, image: jax.Array, padding: int = 4, flip: bool = True, vflip: bool = False) -> jax.Array:
    """Random crop with ``padding``, then (optionally) random horizontal and vertical flips."""
    crop_key, flip_key, vflip_key = jax.random.split(key, 3) if vflip else (*jax.random.split(key), None)
    image = random_crop(crop_key, image, padding)
    image = random_flip(flip_key, image) if flip else image
    return random_vflip(vflip_key, image) if vflip else image


def augment_batch(
    key: jax.Array, images: jax.Array, padding: int = 4, flip: bool = True, vflip: bool = False
) -> jax.Array:
    """:func:`augment` applied to each image of ``[N, H, W, C]`` with its own key."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: augment(k, x, padding, flip, vflip))(keys, images)
