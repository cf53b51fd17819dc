"""A multi-layer perceptron on flattened images."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """Flatten, then ``Dense -> ReLU`` for each hidden width, then a linear classifier.

    Args:
      in_features: number of input features (``H * W * C`` for images).
      num_classes: number of output logits.
      hidden: widths of the hidden layers (empty: multinomial logistic regression).
      rngs: NNX random streams for initialisation.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (128,), *, rngs: nnx.Rngs):
        widths = [in_features, *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate features ``[N, hidden[-1]]`` (the flattened input when there is no hidden layer)."""
        x = jnp.reshape(x, (x.shape[0], -1))
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))
