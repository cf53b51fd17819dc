"""The orthonormal 2-D DCT-II of images, per channel: the frequency view FreqDef and HFE share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.errors import InputError

_HIGHEST = jax.lax.Precision.HIGHEST


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``D [n, n]`` (float64): ``D[u, m] = α(u) cos(π (2m + 1) u / 2n)``,
    ``α(0) = √(1/n)``, ``α(u) = √(2/n)``; ``dct(x) = D @ x``, ``x = Dᵀ @ dct(x)``."""
    if n < 1:
        raise InputError(f"DCT size must be ≥ 1; got {n}.")
    u = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * u / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


def _matrices(shape, dtype) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(dct_matrix(shape[-3]), dtype), jnp.asarray(dct_matrix(shape[-2]), dtype)


def dct2(images: jax.Array) -> jax.Array:
    """Per-channel orthonormal 2-D DCT-II of ``[..., H, W, C]`` images (``D_H X D_Wᵀ`` per channel).

    Equals ``scipy.fft.dctn(x, type=2, norm="ortho", axes=(0, 1))`` for one ``[H, W, C]``
    image; coefficient ``[k, l]`` is vertical frequency ``k``, horizontal frequency ``l``.
    """
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise InputError(f"dct2 needs [..., H, W, C] images; got shape {images.shape}.")
    dh, dw = _matrices(images.shape, images.dtype)
    y = jnp.einsum("kh,...hwc->...kwc", dh, images, precision=_HIGHEST)
    return jnp.einsum("lw,...kwc->...klc", dw, y, precision=_HIGHEST)


def idct2(coefficients: jax.Array) -> jax.Array:
    """The inverse of :func:`dct2` (``D_Hᵀ Y D_W`` per channel)."""
    coefficients = jnp.asarray(coefficients)
    if coefficients.ndim < 3:
        raise InputError(f"idct2 needs [..., H, W, C] coefficients; got shape {coefficients.shape}.")
    dh, dw = _matrices(coefficients.shape, coefficients.dtype)
    x = jnp.einsum("kh,...kwc->...hwc", dh, coefficients, precision=_HIGHEST)
    return jnp.einsum("lw,...hlc->...hwc", dw, x, precision=_HIGHEST)
