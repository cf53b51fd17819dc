"""PointNet: a point-cloud classifier built from shared per-point MLPs and a max-pool.

The architecture of Qi et al. (CVPR 2017) without its input and feature transform networks
(the "vanilla" PointNet) and without batch normalisation or dropout:

1. every point ``[x, y, z]`` of a cloud ``[P, 3]`` goes through the same MLP
   (``point_widths``, ReLU after each layer). Each shared layer is an ``nnx.Linear`` applied to
   the ``[N, P, C]`` array, i.e. a dense layer at every point position, so jaxpoison's K-FAC
   capture treats it like a dense layer over an extra leading axis;
2. a max over the points gives one global feature vector per cloud (``point_widths[-1]``
   wide): the output does not depend on the order of the points;
3. an MLP head (``head_widths``, ReLU) and a linear classifier.

The defaults are the original widths: per-point 64, 64, 64, 128, 1024 and head 512, 256.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison.errors import InputError


class PointNet(nnx.Module):
    """Shared per-point MLP → max over points → MLP head → logits.

    Args:
      num_classes: number of output logits.
      in_features: values per point (3 for ``x, y, z``).
      point_widths: widths of the shared per-point layers (at least one).
      head_widths: widths of the hidden layers of the head (may be empty).
      rngs: NNX random streams for initialisation.
    """

    def __init__(self, num_classes: int, in_features: int = 3, point_widths: Sequence[int] = (64, 64, 64, 128, 1024),
                 head_widths: Sequence[int] = (512, 256), *, rngs: nnx.Rngs):  # fmt: skip
        if not point_widths:
            raise InputError("PointNet needs at least one shared per-point layer (point_widths).")
        points = [in_features, *point_widths]
        head = [points[-1], *head_widths]
        self.point_layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(points)])
        self.head_layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(head)])
        self.classifier = nnx.Linear(head[-1], num_classes, rngs=rngs)

    def global_features(self, x: jax.Array) -> jax.Array:
        """The max-pooled per-point features ``[N, point_widths[-1]]`` of clouds ``[N, P, in_features]``."""
        for layer in self.point_layers:
            x = jax.nn.relu(layer(x))
        return jnp.max(x, axis=-2)

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate features ``[N, head_widths[-1]]`` (the global feature when the head is empty)."""
        x = self.global_features(x)
        for layer in self.head_layers:
            x = jax.nn.relu(layer(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.classifier(self.features(x))
