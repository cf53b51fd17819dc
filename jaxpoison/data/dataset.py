"""The one in-memory dataset type of jaxpoison.

Images live in pixel space: float32, NHWC, values in [0, 1]. Attacks and image
transformations work in that space; normalisation with the dataset's constants
happens at the model's door (:func:`jaxpoison.data.normalize`). Labels are int32
class indices. Every dataset carries where it came from and a content hash, so a
score file or a checkpoint can say which data it belongs to.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from jaxpoison.errors import InputError


class DatasetError(InputError):
    """A dataset is malformed or cannot be loaded; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a dataset came from.

    Attributes:
      source: the loader that produced it, e.g. ``"idx"``, ``"tfds"``, ``"digits"``.
      name: the dataset's name, e.g. ``"fashion_mnist"``.
      split: ``"train"``, ``"test"`` or a derived description.
      location: the directory, file or TFDS name it was read from.
    """

    source: str
    name: str
    split: str
    location: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and everything needed to use them.

    Attributes:
      images: float32 array ``[N, H, W, C]`` in ``[0, 1]``.
      labels: int32 array ``[N]`` with values in ``[0, num_classes)``.
      class_names: one name per class; its length is the number of classes.
      mean: per-channel normalisation mean, shape ``[C]``.
      std: per-channel normalisation standard deviation, shape ``[C]``.
      provenance: where the data came from.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    provenance: Provenance

    def __post_init__(self):
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.ndim != 4:
            raise DatasetError(
                f"images must be a 4-D NHWC array [N, H, W, C]; got shape {images.shape}. "
                "Add a channel axis for grayscale images (images[..., None])."
            )
        if not np.issubdtype(images.dtype, np.floating):
            raise DatasetError(
                f"images must be floating point in [0, 1]; got dtype {images.dtype}. "
                "Convert uint8 images with images.astype(np.float32) / 255."
            )
        images = images.astype(np.float32, copy=False)
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise DatasetError(
                f"images must lie in [0, 1]; got range [{images.min():.3g}, {images.max():.3g}]. "
                "Pass pixel-space images; normalisation is applied later from mean/std."
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"labels must be a 1-D array with one label per image; got shape {labels.shape} "
                f"for {images.shape[0]} images."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"labels must be integers; got dtype {labels.dtype}.")
        labels = labels.astype(np.int32, copy=False)
        num_classes = len(self.class_names)
        if num_classes < 2:
            raise DatasetError(f"a dataset needs at least 2 classes; got class_names={self.class_names!r}.")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(
                f"labels must lie in [0, {num_classes}) for {num_classes} class names; got range "
                f"[{labels.min()}, {labels.max()}]. Pass the full list of class names."
            )
        channels = images.shape[-1]
        mean = np.asarray(self.mean, np.float32).reshape(-1)
        std = np.asarray(self.std, np.float32).reshape(-1)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise DatasetError(
                f"mean and std need one value per channel ({channels}); got {mean.shape} and {std.shape}."
            )
        if np.any(std <= 0):
            raise DatasetError(f"std must be positive; got {std}.")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        p = self.provenance
        return (
            f"Dataset({p.name}/{p.split}: {len(self)} images of shape {self.image_shape}, "
            f"{self.num_classes} classes, source={p.source})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def content_hash(self) -> str:
        """SHA-256 of images, labels and normalisation constants (hex, 16 chars).

        Two datasets with the same hash hold the same examples in the same order.
        """
        h = hashlib.sha256()
        for array in (self.images, self.labels, self.mean, self.std):
            h.update(str(array.shape).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> Dataset:
        """The examples at ``indices`` (in that order), as a new dataset."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise DatasetError(
                f"subset indices must lie in [0, {len(self)}); got range [{indices.min()}, {indices.max()}]."
            )
        return self.replace(
            images=self.images[indices],
            labels=self.labels[indices],
            provenance=dataclasses.replace(
                self.provenance, split=split or f"{self.provenance.split}[{indices.size} selected]"
            ),
        )

    def replace(self, **changes) -> Dataset:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def split_train_validation(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out a stratified ``fraction`` of ``dataset`` for validation.

    Args:
      dataset: the training set to split.
      fraction: share of each class to hold out, in (0, 1).
      seed: seed of the permutation.

    Returns:
      ``(train, validation)``, disjoint, together the whole of ``dataset``.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be in (0, 1); got {fraction}.")
    rng = np.random.default_rng(seed)
    held = []
    for c in range(dataset.num_classes):
        idx = np.flatnonzero(dataset.labels == c)
        rng.shuffle(idx)
        held.append(idx[: round(fraction * idx.size)])
    held_idx = np.sort(np.concatenate(held))
    keep = np.ones(len(dataset), bool)
    keep[held_idx] = False
    return (
        dataset.subset(np.flatnonzero(keep), split=f"{dataset.provenance.split}-train"),
        dataset.subset(held_idx, split=f"{dataset.provenance.split}-validation"),
    )
