"""CIFAR ResNet-18: BasicBlock ×[2, 2, 2, 2], 3×3 stride-1 stem, no max-pool.

This is the victim of the Δ-Influence CIFAR experiments. With 10 classes it has
11,173,962 trainable parameters, the count of the standard PyTorch CIFAR variant.
Convolutions carry no bias (BatchNorm follows each one); kernels use He-normal
initialisation with fan-out, BatchNorm starts at scale 1, bias 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison.errors import InputError

_he_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(cin: int, cout: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = kernel // 2
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=_he_fan_out, rngs=rngs)  # fmt: skip


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (weight of the old running average).
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride, rngs), _bn(cout, rngs)
        self.conv2, self.bn2 = _conv(cout, cout, 3, 1, rngs), _bn(cout, rngs)
        if stride != 1 or cin != cout:
            self.shortcut = nnx.data((_conv(cin, cout, 1, stride, rngs), _bn(cout, rngs)))
        else:
            self.shortcut = nnx.data(())

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut:
            conv, bn = self.shortcut
            x = bn(conv(x))
        return jax.nn.relu(y + x)


class ResNet18(nnx.Module):
    """CIFAR-style ResNet-18.

    Args:
      num_classes: number of output logits.
      in_channels: input channels (3 for CIFAR).
      width: channels of the first stage (64 in the standard model).
      stem: ``"cifar"`` (3×3 stride 1) or ``"imagenet"`` (7×7 stride 2; still no max-pool,
        as in the Imagenette runs of the reference code).
      rngs: NNX random streams for initialisation.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, stem: str = "cifar", *, rngs: nnx.Rngs):
        if stem == "cifar":
            self.stem_conv = _conv(in_channels, width, 3, 1, rngs)
        elif stem == "imagenet":
            self.stem_conv = nnx.Conv(in_channels, width, (7, 7), strides=2, padding=((3, 3), (3, 3)),
                                      use_bias=False, kernel_init=_he_fan_out, rngs=rngs)  # fmt: skip
        else:
            raise InputError(f"unknown ResNet stem {stem!r}; choose 'cifar' or 'imagenet'.")
        self.stem_bn = _bn(width, rngs)
        blocks, cin = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**stage
            blocks += [BasicBlock(cin, cout, stride, rngs=rngs), BasicBlock(cout, cout, 1, rngs=rngs)]
            cin = cout
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Globally average-pooled features ``[N, 8 * width]``."""
        x = jax.nn.relu(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.features(x))
