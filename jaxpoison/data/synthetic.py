"""Random image datasets with real shapes, for timing and smoke runs (content is noise)."""

from __future__ import annotations

import numpy as np

from jaxpoison.data.dataset import Dataset, Provenance


def synthetic_dataset(
    n: int, image_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10, seed: int = 0
) -> Dataset:
    """``n`` uniform-noise images of ``image_shape`` with uniform random labels.

    The default is CIFAR-shaped (32×32×3, 10 classes): benchmarks time paper-scale
    pipelines with it where the real data is not at hand, as timing does not depend
    on the pixels.
    """
    rng = np.random.default_rng(seed)
    channels = image_shape[-1]
    return Dataset(
        images=rng.random((n, *image_shape), dtype=np.float32),
        labels=rng.integers(0, num_classes, n).astype(np.int32),
        class_names=tuple(map(str, range(num_classes))),
        mean=np.full(channels, 0.5, np.float32),
        std=np.full(channels, 0.29, np.float32),
        provenance=Provenance("synthetic", "x".join(map(str, image_shape)), "train"),
    )
