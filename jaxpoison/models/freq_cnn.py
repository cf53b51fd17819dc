"""The frequency-domain detector network of FreqDef (Zeng et al., ICCV 2021).

A six-convolution VGG-style CNN that classifies the per-channel 2-D DCT of an image
as clean or triggered (see :mod:`jaxpoison.detection.freqdef`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison.errors import InputError
from jaxpoison.models.layers import max_pool_2x2


def _next_multiple_of_8(n: int) -> int:
    return -(-n // 8) * 8


class FreqCNN(nnx.Module):
    """``[conv3x3(w)-BN-ELU]×2 -> pool -> [conv3x3(2w)-BN-ELU]×2 -> pool -> [conv3x3(4w)-BN-ELU]×2 -> pool -> Dense``.

    The architecture of Zeng et al.'s frequency detector (``w = 32``). Differences from
    the reference:

    * No dropout. The reference drops 0.2/0.3/0.4 after each pooling; jaxpoison's
      functional boundary (``train_apply(params, state, x)``) carries no dropout key.
    * Inputs whose height or width is not a multiple of 8 are zero-padded at the
      bottom/right to the next multiple of 8 before the first convolution, so that the
      three 2×2 poolings lose nothing (a 28×28 DCT becomes 32×32). For DCT inputs these
      are the rows and columns past the highest frequency, so the padding reads as
      "frequencies that are absent". Inputs already divisible by 8 are untouched.
    * BatchNorm uses PyTorch's momentum 0.1 (Flax ``momentum=0.9``) and epsilon 1e-5,
      as in the PyTorch port the Δ-Influence experiments used; kernels use Flax's
      default LeCun-normal initialisation.

    On 32×32×3 inputs with ``width=32`` the model has 292,002 trainable parameters.

    Args:
      image_shape: ``(H, W, C)`` of the inputs (any positive ``H``, ``W``).
      num_classes: number of output logits (2: clean, triggered).
      width: channels of the first two convolutions (then ``2·width`` and ``4·width``).
      rngs: NNX random streams for initialisation.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 2, width: int = 32, *, rngs: nnx.Rngs):
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InputError(f"FreqCNN needs image_shape (H, W, C) with positive sizes; got {image_shape!r}.")
        if width < 1 or num_classes < 1:
            raise InputError(f"FreqCNN needs width ≥ 1 and num_classes ≥ 1; got {width} and {num_classes}.")
        h, w, c = image_shape
        self.pad_h = _next_multiple_of_8(h) - h
        self.pad_w = _next_multiple_of_8(w) - w
        convs, norms, cin = [], [], c
        for cout in (width, width, 2 * width, 2 * width, 4 * width, 4 * width):
            convs.append(nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs))
            # PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (weight of the old running average).
            norms.append(nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs))
            cin = cout
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        features = (_next_multiple_of_8(h) // 8) * (_next_multiple_of_8(w) // 8) * 4 * width
        self.fc = nnx.Linear(features, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The flattened output of the last pooling, ``[N, (H'/8)·(W'/8)·4·width]`` (``H'``, ``W'`` padded)."""
        if self.pad_h or self.pad_w:
            x = jnp.pad(x, ((0, 0), (0, self.pad_h), (0, self.pad_w), (0, 0)))
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = jax.nn.elu(norm(conv(x)))
            if i % 2 == 1:
                x = max_pool_2x2(x)
        return jnp.reshape(x, (x.shape[0], -1))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.features(x))
