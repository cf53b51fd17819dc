"""The small CNN used for 28×28 (Fashion-MNIST, MNIST) and 8×8 (digits) images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison.errors import InputError
from jaxpoison.models.layers import max_pool_2x2


class CNN(nnx.Module):
    """``conv3x3(32) -> ReLU -> maxpool2 -> conv3x3(64) -> ReLU -> maxpool2 -> Dense(128) -> ReLU -> Dense``.

    On 28×28×1 inputs the flattened features are 7·7·64 = 3136 wide and the model has
    421,642 parameters; this is the model of the Fashion-MNIST benchmarks.

    Args:
      image_shape: ``(H, W, C)`` of the inputs; ``H`` and ``W`` must be divisible by 4.
      num_classes: number of output logits.
      width: channels of the first convolution (the second has twice as many).
      hidden: width of the dense hidden layer.
      rngs: NNX random streams for initialisation.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32, hidden: int = 128, *, rngs: nnx.Rngs
    ):
        h, w, c = image_shape
        if h % 4 or w % 4:
            raise InputError(f"CNN needs image height and width divisible by 4; got {image_shape}.")
        self.conv1 = nnx.Conv(c, width, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), padding="SAME", rngs=rngs)
        self.fc1 = nnx.Linear((h // 4) * (w // 4) * 2 * width, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate features ``[N, hidden]``."""
        x = max_pool_2x2(jax.nn.relu(self.conv1(x)))
        x = max_pool_2x2(jax.nn.relu(self.conv2(x)))
        return jax.nn.relu(self.fc1(jnp.reshape(x, (x.shape[0], -1))))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.features(x))
