"""The one in-memory dataset type of jaxpoison.

A dataset holds one kind of example (:data:`KINDS`):

* ``"image"`` — pixel space: float32, NHWC, values in [0, 1]. Attacks and image
  transformations work in that space;
* ``"features"`` — float32 vectors (or any per-example shape) of finite values, e.g. tabular data;
* ``"tokens"`` — int32 token ids ``[N, T]`` (or any per-example shape), never normalised.

Normalisation with the dataset's constants happens at the model's door (the model is built
with them). Labels are int32 class indices. Every dataset carries where it came from and a
content hash, so a score file or a checkpoint can say which data it belongs to. Parts of
jaxpoison that need image semantics (triggers, image transformations, FreqDef, augmentation)
refuse the other kinds with :func:`require_images`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from jaxpoison.errors import InputError


class DatasetError(InputError):
    """A dataset is malformed or cannot be loaded; the message says how to fix it."""


KINDS = ("image", "features", "tokens")


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


def _example_values(values: np.ndarray, limit: int = 3) -> str:
    return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:limit].tolist())


def check_image_layout(shape: tuple[int, ...], name: str = "images") -> None:
    """Refuse anything but an NHWC shape ``[N, H, W, C]`` with non-empty images.

    A channel-first array ``[N, C, H, W]`` (dim 1 of 1 or 3, last dim not 1, 3 or 4) is
    refused too: read as NHWC it would silently become images of height C.
    """
    if len(shape) != 4:
        raise DatasetError(
            f"{name} must be a 4-D NHWC array [N, H, W, C]; got shape {tuple(shape)}. "
            "Add a channel axis for grayscale images (images[..., None])."
        )
    if shape[1] in (1, 3) and shape[3] not in (1, 3, 4):
        raise DatasetError(
            f"{name} has shape {tuple(shape)}, which looks channel-first (NCHW); jaxpoison needs "
            "channel-last NHWC. Transpose it with x.transpose(0, 2, 3, 1)."
        )
    if 0 in shape[1:]:
        raise DatasetError(f"{name} has an empty image dimension: shape {tuple(shape)}; H, W and C must be >= 1.")


def check_unit_range(images: np.ndarray, name: str = "images") -> None:
    """Refuse float ``images`` holding NaN or inf, or values outside ``[0, 1]``.

    NaN compares false with everything, so a plain range check would let it through;
    ``min``/``max`` propagate NaN, which makes one pass of each enough to notice it.
    """
    if not images.size:
        return
    lo, hi = images.min(), images.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = ~np.isfinite(images)
        rows = np.flatnonzero(bad.reshape(images.shape[0], -1).any(axis=1)) if images.ndim > 1 else np.flatnonzero(bad)
        count = int(bad.sum())
        raise DatasetError(
            f"{name} holds {count} non-finite value{'s' * (count != 1)} (NaN or inf) out of {images.size}, in examples "
            f"{_example_values(rows, 5)}{', ...' if rows.size > 5 else ''}. Fix or drop those images."
        )
    if lo < 0.0 or hi > 1.0:
        raise DatasetError(
            f"{name} must lie in [0, 1]; got range [{lo:.3g}, {hi:.3g}]. Pass pixel-space images "
            "(uint8 data divided by 255); normalisation is applied later from mean/std."
        )


def check_labels(labels, name: str = "labels", num_classes: int | None = None) -> np.ndarray:
    """``labels`` as int32 class indices, or a :class:`DatasetError`.

    Only integer arrays are class labels: float labels are refused even when every value is
    whole (convert them yourself, knowing they are), so nothing is ever truncated; bool
    arrays are masks, not labels. Values must be >= 0 and, with ``num_classes``, below it.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"{name} must be a 1-D array of class labels; got shape {labels.shape}.")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        example = ""
        if labels.size and labels.dtype.kind in "fc":
            frac = labels[labels != np.round(labels)] if labels.dtype.kind == "f" else labels
            example = f" ({_example_values(frac if frac.size else labels)} ...)"
        raise DatasetError(
            f"{name} must hold integer class labels; got {labels.dtype}{example}. Save labels as an integer "
            "array, e.g. y.astype(np.int64) once you have checked they are whole class indices."
        )
    # Compare in the stored dtype: casting first would wrap 2**32 + 1 round to a valid label.
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{name} holds negative labels (min {labels.min()}); class labels count from 0.")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise DatasetError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} class names; got range "
            f"[{labels.min()}, {labels.max()}]. Pass the full list of class names."
        )
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise DatasetError(f"{name} holds label {labels.max()}, too large for a class index; check the array.")
    return labels.astype(np.int32, copy=False)


def _per_channel(value, what: str, channels: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DatasetError(f"{what} must be numbers, one per channel; got {value!r}.")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        array = array.astype(np.float32).reshape(-1)
    if array.shape != (channels,):
        raise DatasetError(f"mean and std need one value per channel ({channels}); got {what} of shape {array.shape}.")
    if not np.isfinite(array).all():
        raise DatasetError(
            f"{what} must be finite float32 values; got {np.asarray(value).reshape(-1)}. "
            "Compute it from the training images."
        )
    return array


def _check_images(images: np.ndarray) -> np.ndarray:
    check_image_layout(images.shape)
    if not np.issubdtype(images.dtype, np.floating):
        raise DatasetError(
            f"images must be floating point in [0, 1]; got dtype {images.dtype}. "
            "Convert uint8 images with images.astype(np.float32) / 255."
        )
    # Checked before the cast: a float64 beyond float32's range would otherwise turn into inf.
    check_unit_range(images)
    return images.astype(np.float32, copy=False)


def _check_examples(inputs: np.ndarray, kind: str) -> np.ndarray:
    """Validate non-image inputs: ``[N, ...]`` with at least one value per example."""
    if inputs.ndim < 2 or 0 in inputs.shape[1:]:
        raise DatasetError(f"{kind} must be an array [N, ...] with at least one value per example; got shape "
                           f"{inputs.shape}.")  # fmt: skip
    if kind == "tokens":
        if inputs.dtype == bool or not np.issubdtype(inputs.dtype, np.integer):
            raise DatasetError(f"tokens must be integer ids; got dtype {inputs.dtype}. Use kind='features' for "
                               "real-valued inputs.")  # fmt: skip
        if inputs.size and (inputs.min() < 0 or inputs.max() > np.iinfo(np.int32).max):
            raise DatasetError(f"token ids must lie in [0, 2**31); got range [{inputs.min()}, {inputs.max()}].")
        return inputs.astype(np.int32, copy=False)
    if not np.issubdtype(inputs.dtype, np.floating) and not np.issubdtype(inputs.dtype, np.integer):
        raise DatasetError(f"features must be numbers; got dtype {inputs.dtype}.")
    with np.errstate(over="ignore"):
        inputs = inputs.astype(np.float32, copy=False)
    if not np.isfinite(inputs).all():
        rows = np.flatnonzero(~np.isfinite(inputs.reshape(len(inputs), -1)).all(axis=1))
        raise DatasetError(f"features hold NaN or inf (after conversion to float32) in examples "
                           f"{rows[:5].tolist()}; impute or drop them first.")  # fmt: skip
    return inputs


def require_images(dataset: Dataset, what: str) -> None:
    """Refuse a dataset whose examples are not images, naming the image-only method ``what``."""
    if dataset.kind != "image":
        raise DatasetError(f"{what} needs image data ([N, H, W, C] pixels in [0, 1]); this dataset holds "
                           f"{dataset.kind} of shape {dataset.images.shape}. Methods that work on any data: "
                           "influence scores, EK-FAC/TRAK thresholds, label-only Δ-Influence (modify='label'), "
                           "spectral signatures, activation clustering, EU and CF.")  # fmt: skip


def content_hash(kind: str, shape: tuple[int, ...], blocks, labels, mean, std) -> str:
    """SHA-256 (hex, 16 chars) of a dataset: its inputs of ``shape``, given as consecutive row
    ``blocks`` (one array, or chunks read from disk), then labels and normalisation constants."""
    h = hashlib.sha256(b"" if kind == "image" else kind.encode())
    h.update(str(tuple(shape)).encode())
    for block in blocks:
        h.update(np.ascontiguousarray(block).tobytes())
    for array in (labels, mean, std):
        h.update(str(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and everything needed to use them.

    Images must already be float in [0, 1]: integer (e.g. uint8) images are refused, not
    scaled, since the right divisor is not ours to guess (the loaders divide uint8 by 255).

    Attributes:
      images: the inputs. For ``kind="image"``: float32 ``[N, H, W, C]`` in ``[0, 1]``, all finite;
        ``"features"``: float32 ``[N, ...]``, all finite; ``"tokens"``: int32 ``[N, ...]``, ≥ 0.
      labels: int32 array ``[N]`` with values in ``[0, num_classes)`` (integer input only).
      class_names: one name per class; its length is the number of classes.
      mean: per-channel (last-axis) normalisation mean, shape ``[C]``, finite. Tokens: ``[0.]``.
      std: per-channel normalisation standard deviation, shape ``[C]``, finite and > 0. Tokens: ``[1.]``.
      provenance: where the data came from.
      kind: what an example is, one of :data:`KINDS` (default ``"image"``).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    provenance: Provenance
    kind: str = "image"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DatasetError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}.")
        try:
            images = np.asarray(self.images)
        except ValueError as e:  # ragged nested lists
            raise DatasetError(f"images must be one rectangular array [N, ...] ({e}).") from e
        if self.kind == "image":
            images = _check_images(images)
        else:
            images = _check_examples(images, self.kind)
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"labels must be a 1-D array with one label per image; got shape {labels.shape} "
                f"for {images.shape[0]} images."
            )
        if isinstance(self.class_names, (str, bytes, set, frozenset)):
            # A string would become one class per character, a set an arbitrary order.
            kind = type(self.class_names).__name__
            raise DatasetError(f"class_names must be an ordered sequence of names (list or tuple); got a {kind}.")
        class_names = tuple(str(c) for c in self.class_names)
        if len(class_names) < 2:
            raise DatasetError(f"a dataset needs at least 2 classes; got class_names={class_names!r}.")
        labels = check_labels(labels, "labels", len(class_names))
        channels = 1 if self.kind == "tokens" else images.shape[-1]
        mean = np.zeros(1, np.float32) if self.kind == "tokens" else _per_channel(self.mean, "mean", channels)
        std = np.ones(1, np.float32) if self.kind == "tokens" else _per_channel(self.std, "std", channels)
        if np.any(std <= 0):
            raise DatasetError(f"std must be positive; got {std}.")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", class_names)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        p = self.provenance
        return (
            f"Dataset({p.name}/{p.split}: {len(self)} {'images' if self.kind == 'image' else self.kind + ' examples'} "
            f"of shape {self.image_shape}, "
            f"{self.num_classes} classes, source={p.source})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One example's shape (``(H, W, C)`` for images)."""
        return tuple(self.images.shape[1:])

    input_shape = image_shape

    @property
    def content_hash(self) -> str:
        """SHA-256 of images, labels and normalisation constants (hex, 16 chars).

        Two datasets with the same hash hold the same examples in the same order.
        """
        return content_hash(self.kind, self.images.shape, [self.images], self.labels, self.mean, self.std)

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> Dataset:
        """The examples at ``indices`` (in that order), as a new dataset.

        ``indices`` are positions in ``[0, len)`` (negative positions are refused, not counted
        from the end) or a boolean mask of length ``len``.
        """
        indices = np.asarray(indices)
        if indices.size == 0:
            indices = indices.reshape(0).astype(np.int64)  # [] arrives as float64
        if indices.ndim != 1:
            raise DatasetError(f"subset indices must be a 1-D array; got shape {indices.shape}.")
        if indices.dtype == bool:
            if indices.size != len(self):
                raise DatasetError(
                    f"a boolean subset mask needs one entry per example ({len(self)}); got {indices.size}."
                )
            indices = np.flatnonzero(indices)
        if not np.issubdtype(indices.dtype, np.integer):
            raise DatasetError(f"subset indices must be integers; got dtype {indices.dtype}.")
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
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

    def first(self, n: int, split: str | None = None) -> Dataset:
        """The first ``n`` examples (all of them when there are fewer), e.g. for a ``train_size``.

        ``n`` must be a positive integer: a zero or negative size is refused rather than
        read as "none" (``np.arange(-5)`` is empty), and a float is not rounded.
        """
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DatasetError(
                f"cannot keep the first {n!r} examples of {self.provenance.name}/{self.provenance.split}: "
                "the size must be a positive integer (leave it unset to keep every example)."
            )
        return self.subset(np.arange(min(int(n), len(self))), split=split)

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
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)):
        raise DatasetError(f"validation fraction must be a number in (0, 1); got {fraction!r}.")
    if not 0.0 < fraction < 1.0:  # NaN fails this too
        raise DatasetError(f"validation fraction must be in (0, 1); got {fraction}.")
    if len(dataset) == 0:
        raise DatasetError(
            f"cannot split a validation share off {dataset.provenance.name}/{dataset.provenance.split}: it has no "
            "examples (was it shortened to a size of 0 or less?)."
        )
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
