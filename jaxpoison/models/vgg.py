"""CIFAR VGG-16 with BatchNorm, the proxy model of the FUS selection baseline.

Thirteen 3×3 conv-BN-ReLU layers in five max-pooled stages, then a single linear
classifier on the 512 pooled features (the common CIFAR variant: 14,728,266
trainable parameters with 10 classes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison.models.layers import max_pool_2x2

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nnx.Module):
    """VGG-16 for small images (each of the five stages halves the resolution).

    Args:
      num_classes: number of output logits.
      in_channels: input channels.
      rngs: NNX random streams for initialisation.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *, rngs: nnx.Rngs):
        convs, bns, cin = [], [], in_channels
        for stage in VGG16_STAGES:
            for cout in stage:
                convs.append(nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs))
                bns.append(nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs))
                cin = cout
        self.convs, self.bns = nnx.List(convs), nnx.List(bns)
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Pooled features ``[N, 512]``."""
        layer = 0
        for stage in VGG16_STAGES:
            for _ in stage:
                x = jax.nn.relu(self.bns[layer](self.convs[layer](x)))
                layer += 1
            # Pool only while there is resolution left, so tiny inputs still work.
            if x.shape[1] > 1 and x.shape[2] > 1:
                x = max_pool_2x2(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.features(x))
