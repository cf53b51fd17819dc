"""Training sets that stay on disk: rows read per batch, poisons as an overlay, never a copy.

The streamed passes (training, factor fit, scoring, features) read a dataset through four
things only: ``len(dataset)``, ``dataset.images[rows]``, ``dataset.labels[rows]`` and
``dataset.content_hash``. :class:`Dataset` holds its images in memory; a
:class:`StreamedDataset` offers the same reads over a :class:`RowSource`, so an
ImageNet-scale set is scored in the memory of one batch:

* :class:`NpyShards`: a directory of ``.npy`` shards (``uint8`` pixels or ``float32`` in
  [0, 1]), read with positioned reads (not memory maps, whose touched pages would count
  against the process), in a fixed order, any rows at random;
* :class:`ImageFolderRows`: image files decoded (and resized) as their rows are read;
* :class:`RecordRows`: examples of a random-access record source, e.g. ``tfds.data_source``
  over ArrayRecord files (:func:`stream_tfds`) or a Grain data source;
* :class:`Overlay`: another source with a function applied to a fixed set of rows, which is
  how :func:`~jaxpoison.attacks.poison_streamed` poisons a streamed set without copying it.

Each process of a multi-process run reads only the rows of its own shard of every batch
(``sharding.local_rows``), so no process ever holds the whole set. :func:`write_npy_shards`
turns arrays (or a generator of chunks) into shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from jaxpoison.data.dataset import DatasetError, Provenance, check_labels, content_hash

SHARD_INDEX = "shards.json"
HASH_ROWS = 4096  # rows per read while hashing


@runtime_checkable
class RowSource(Protocol):
    """Random access to a dataset's inputs, float32 in [0, 1], a batch of rows at a time."""

    shape: tuple[int, ...]  # (N, *example_shape)
    dtype: np.dtype

    def __len__(self) -> int: ...

    def __getitem__(self, rows) -> np.ndarray: ...


def _rows(rows, n: int) -> np.ndarray:
    """Row indices as a 1-D int64 array, checked against ``n`` (slices and lists welcome)."""
    if isinstance(rows, slice):
        return np.arange(n)[rows]
    rows = np.asarray(rows)
    if rows.dtype == bool:
        raise DatasetError("select streamed rows by index, not by a boolean mask.")
    rows = rows.astype(np.int64).reshape(-1) if rows.ndim else rows.astype(np.int64).reshape(1)
    if rows.size and (rows.min() < -n or rows.max() >= n):
        raise DatasetError(f"row index out of range for {n} rows: {rows.min()}..{rows.max()}.")
    return np.where(rows < 0, rows + n, rows)


def _npy_header(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """The byte offset of a ``.npy`` file's data, its shape and dtype (C order only)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran:
        raise DatasetError(f"{path} is stored in Fortran order; save shards in C order (np.save of a C array).")
    return offset, tuple(shape), np.dtype(dtype)


class NpyShards:
    """Rows of a directory of ``.npy`` shards, concatenated in the order ``shards.json`` lists them.

    ``uint8`` shards are scaled by 1/255 as they are read; ``float32`` shards must already be
    in [0, 1]. Rows are read with ``os.pread``, one read per run of consecutive rows.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index = self.directory / SHARD_INDEX
        if not index.is_file():
            raise DatasetError(f"{self.directory} has no {SHARD_INDEX}; write shards with "
                               "jaxpoison.data.write_npy_shards.")  # fmt: skip
        names = json.loads(index.read_text())["images"]
        self._files, starts, example_shape, dtype = [], [0], None, None
        for name in names:
            offset, shape, file_dtype = _npy_header(self.directory / name)
            if example_shape is None:
                example_shape, dtype = shape[1:], file_dtype
            if shape[1:] != example_shape or file_dtype != dtype:
                raise DatasetError(f"shard {name} holds {file_dtype} {shape[1:]} rows; the first holds {dtype} "
                                   f"{example_shape}. Every shard must hold rows of one shape and dtype.")  # fmt: skip
            self._files.append((self.directory / name, offset))
            starts.append(starts[-1] + shape[0])
        if dtype not in (np.uint8, np.float32):
            raise DatasetError(f"shards must hold uint8 pixels or float32 values in [0, 1]; got {dtype}.")
        self._starts = np.asarray(starts, np.int64)
        self._stored = dtype
        self._row_bytes = int(np.prod(example_shape)) * dtype.itemsize
        self.shape = (int(starts[-1]), *example_shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, shard: int, first: int, count: int) -> np.ndarray:
        path, offset = self._files[shard]
        with open(path, "rb") as f:
            data = os.pread(f.fileno(), count * self._row_bytes, offset + first * self._row_bytes)
        return np.frombuffer(data, self._stored).reshape(count, *self.shape[1:])

    def __getitem__(self, rows) -> np.ndarray:
        rows = _rows(rows, len(self))
        out = np.empty((rows.size, *self.shape[1:]), np.float32)
        i = 0
        while i < rows.size:  # a run of consecutive rows inside one shard is one read
            shard = int(np.searchsorted(self._starts, rows[i], side="right") - 1)
            j = i + 1
            while j < rows.size and rows[j] == rows[j - 1] + 1 and rows[j] < self._starts[shard + 1]:
                j += 1
            block = self._read(shard, int(rows[i] - self._starts[shard]), j - i)
            out[i:j] = block / np.float32(255) if self._stored == np.uint8 else block
            i = j
        return out



class ImageFolderRows:
    """Rows decoded from image files (PIL) as they are read, resized to ``size × size`` when given."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int | None = None, channels: int = 3):
        from PIL import Image  # pillow comes with matplotlib; imported lazily as few users need it

        self._pil = Image
        if not paths:
            raise DatasetError("an image-folder source needs at least one image file.")
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels}.")
        self.paths, self.size, self.channels = [Path(p) for p in paths], size, channels
        first = self._decode(self.paths[0])
        self.shape = (len(self.paths), *first.shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, path: Path) -> np.ndarray:
        with self._pil.open(path) as image:
            image = image.convert("L" if self.channels == 1 else "RGB")
            if self.size is not None:
                image = image.resize((self.size, self.size), self._pil.Resampling.BILINEAR)
            pixels = np.asarray(image, np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if hasattr(self, "shape") and pixels.shape != self.shape[1:]:
            raise DatasetError(f"{path} decodes to {pixels.shape}, not {self.shape[1:]}; give the source a size.")
        return pixels.astype(np.float32) / np.float32(255)

    def __getitem__(self, rows) -> np.ndarray:
        rows = _rows(rows, len(self))
        return np.stack([self._decode(self.paths[r]) for r in rows]) if rows.size else np.empty(
            (0, *self.shape[1:]), np.float32)  # fmt: skip


class RecordRows:
    """Rows of a random-access sequence of examples (``tfds.data_source``, a Grain data source, a list).

    Each example is a mapping; ``key`` holds its input, uint8 pixels (scaled by 1/255) or float
    values in [0, 1]. Grayscale images gain a channel axis; ``size`` resizes them.
    """

    def __init__(self, records, *, key: str = "image", size: int | None = None):
        if len(records) == 0:
            raise DatasetError("a record source needs at least one example.")
        self.records, self.key, self.size = records, key, size
        self.shape = (len(records), *self._decode(records[0]).shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, example) -> np.ndarray:
        try:
            value = np.asarray(example[self.key])
        except (KeyError, TypeError, IndexError):
            raise DatasetError(f"an example has no {self.key!r} entry; pass key= naming the input.") from None
        value = value[..., None] if value.ndim == 2 else value
        if self.size is not None and value.shape[:2] != (self.size, self.size):
            from PIL import Image

            channels = value.shape[-1]
            image = Image.fromarray(value[..., 0] if channels == 1 else value)
            value = np.asarray(image.resize((self.size, self.size), Image.Resampling.BILINEAR)).reshape(
                self.size, self.size, channels)  # fmt: skip
        if value.dtype == np.uint8:
            return value.astype(np.float32) / np.float32(255)
        return value.astype(np.float32)

    def __getitem__(self, rows) -> np.ndarray:
        rows = _rows(rows, len(self))
        examples = [self.records[int(r)] for r in rows]
        if not rows.size:
            return np.empty((0, *self.shape[1:]), np.float32)
        out = np.stack([self._decode(e) for e in examples])
        if out.shape[1:] != self.shape[1:]:
            raise DatasetError(f"examples decode to shapes other than {self.shape[1:]}; give the source a size.")
        return out


def stream_tfds(tfds_name: str, split: str, *, image_key: str = "image", label_key: str = "label",
                image_size: int | None = None, mean=0.5, std=0.25) -> StreamedDataset:  # fmt: skip
    """A prepared TFDS dataset read with ``tfds.data_source`` (ArrayRecord) row by row, never held whole.

    The labels are read once, up front (one pass over the records); the images on demand.
    Never downloads.

    Raises:
      DatasetError: the dataset is not prepared in the TFDS data directory.
    """
    import tensorflow_datasets as tfds

    from jaxpoison.data.sources import _tfds_data_dir

    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=_tfds_data_dir(), download=False)
        names = tuple(tfds.builder(tfds_name, data_dir=_tfds_data_dir()).info.features[label_key].names)
    except Exception as e:  # tfds raises assorted errors for unprepared or unknown datasets
        raise DatasetError(f"TFDS dataset {tfds_name} is not prepared here ({type(e).__name__}); prepare it once "
                           f"with `tfds build {tfds_name}`.") from e  # fmt: skip
    labels = np.fromiter((int(source[i][label_key]) for i in range(len(source))), np.int32, len(source))
    return StreamedDataset(RecordRows(source, key=image_key, size=image_size), labels, names, mean, std,
                           Provenance("tfds-stream", tfds_name, split, tfds_name))  # fmt: skip


class Overlay:
    """``base`` with ``change(inputs) -> inputs`` applied to the rows in ``indices``, as they are read."""

    def __init__(self, base: RowSource, indices, change: Callable[[np.ndarray], np.ndarray]):
        self.base, self.change = base, change
        self.indices = np.unique(_rows(indices, len(base)))
        self.shape, self.dtype = base.shape, base.dtype

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, rows) -> np.ndarray:
        rows = _rows(rows, len(self))
        out = self.base[rows]
        hit = np.isin(rows, self.indices)
        if hit.any():
            # Changed as a whole batch, then picked: the shape ``change`` sees is the batch's,
            # not the number of poisons in it, so a jitted trigger compiles once, not per count.
            out[hit] = np.asarray(self.change(out), np.float32)[hit]
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedDataset:
    """A dataset whose inputs are read from a :class:`RowSource` batch by batch.

    It answers the reads of the streamed passes (``len``, ``images[rows]``, ``labels[rows]``,
    ``content_hash``) the way :class:`Dataset` does; labels (one integer per example) stay in
    memory. Use :meth:`to_memory` for code that needs the whole array.
    """

    images: RowSource
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    provenance: Provenance
    kind: str = "image"

    def __post_init__(self):
        if not isinstance(self.images, RowSource):
            raise DatasetError(f"images must be a RowSource (NpyShards, ImageFolderRows, Overlay, or an array such "
                               f"as np.memmap); got {type(self.images).__name__}.")  # fmt: skip
        class_names = tuple(str(c) for c in self.class_names)
        labels = check_labels(np.asarray(self.labels), "labels", len(class_names))
        if labels.shape != (len(self.images),):
            raise DatasetError(f"{len(self.images)} streamed examples need as many labels; got {labels.shape}.")
        channels = self.images.shape[-1]
        for name in ("mean", "std"):
            value = np.broadcast_to(np.asarray(getattr(self, name), np.float32), (channels,)).copy()
            object.__setattr__(self, name, value)
        if np.any(self.std <= 0):
            raise DatasetError(f"std must be positive; got {self.std}.")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    input_shape = image_shape

    @property
    def content_hash(self) -> str:
        """:attr:`Dataset.content_hash` of the same examples, computed by streaming the rows once.

        Equal content gives an equal hash however it is stored, so factors fitted on an
        in-memory copy score a streamed one, and back.
        """
        cached = self.__dict__.get("_hash")
        if cached is None:
            blocks = (np.asarray(self.images[start : start + HASH_ROWS], np.float32)
                      for start in range(0, len(self), HASH_ROWS))  # fmt: skip
            cached = content_hash(self.kind, self.images.shape, blocks, self.labels, self.mean, self.std)
            object.__setattr__(self, "_hash", cached)
        return cached

    def with_overlay(self, indices, change: Callable[[np.ndarray], np.ndarray],
                     labels: np.ndarray | None = None) -> StreamedDataset:  # fmt: skip
        """This dataset with ``change`` applied to the rows ``indices`` (and new ``labels``), copying no input."""
        return dataclasses.replace(self, images=Overlay(self.images, indices, change),
                                   labels=self.labels if labels is None else labels)  # fmt: skip

    def to_memory(self):
        """The whole set as an in-memory :class:`Dataset` (reads every row)."""
        from jaxpoison.data.dataset import Dataset

        return Dataset(self.images[np.arange(len(self))], self.labels, self.class_names, self.mean, self.std,
                       self.provenance, self.kind)  # fmt: skip


def write_npy_shards(directory: str | os.PathLike, chunks: Iterable[np.ndarray], *, labels: np.ndarray | None = None,
                     prefix: str = "images") -> Path:  # fmt: skip
    """Write ``chunks`` (arrays ``[n_i, ...]``, uint8 or float32) as numbered shards plus ``shards.json``.

    ``labels``, if given, are saved beside them as ``labels.npy``. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, chunk in enumerate(chunks):
        chunk = np.ascontiguousarray(chunk)
        if chunk.dtype not in (np.uint8, np.float32):
            raise DatasetError(f"shards hold uint8 pixels or float32 values in [0, 1]; chunk {i} is {chunk.dtype}.")
        name = f"{prefix}-{i:05d}.npy"
        np.save(directory / name, chunk)
        names.append(name)
    if labels is not None:
        np.save(directory / "labels.npy", np.asarray(labels, np.int32))
    (directory / SHARD_INDEX).write_text(json.dumps({"images": names}, indent=2))
    return directory


def load_npy_shards(directory: str | os.PathLike, class_names: Sequence[str], *, mean=0.5, std=0.25,
                    name: str = "shards", split: str = "train") -> StreamedDataset:  # fmt: skip
    """A :class:`StreamedDataset` over ``directory``'s shards and its ``labels.npy``."""
    directory = Path(directory)
    if not (directory / "labels.npy").is_file():
        raise DatasetError(f"{directory} has no labels.npy; pass labels= to write_npy_shards.")
    labels = np.load(directory / "labels.npy")
    return StreamedDataset(NpyShards(directory), labels, tuple(class_names), mean, std,
                           Provenance("npy-shards", name, split, str(directory)))  # fmt: skip
