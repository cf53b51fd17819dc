"""Parsers for the standard on-disk formats of image datasets.

Each parser checks what it reads (magic numbers, sizes, lengths) and raises a
:class:`~jaxpoison.data.DatasetError` naming the file and what is wrong, instead
of returning garbage. Nothing here unpickles: CIFAR is read from its *binary*
version, user arrays from ``.npz`` with ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxpoison.data.dataset import DatasetError, check_unit_range

# IDX type codes (LeCun's MNIST format): code -> (numpy dtype, bytes per element).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}. Check the path and its permissions.") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(
                f"{path} is not a complete gzip file ({e}). It is probably truncated or corrupt: "
                "download it again."
            ) from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into an array of its stored shape.

    Args:
      path: e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
      The array, in native byte order.

    Raises:
      DatasetError: the file is missing, not IDX, or shorter/longer than its header says.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number). Expected MNIST-style IDX data.")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unknown IDX element type 0x{type_code:02x}.")
    if ndim > 32:  # numpy cannot even hold such an array; real IDX files have 1 to 4
        raise DatasetError(f"{path}: its IDX header claims {ndim} dimensions; the file is corrupt.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header; download it again.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    # Python ints: np.prod would wrap around in int64 for a hostile header (e.g. 2**32 x 2**32).
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {expected} for shape "
            f"{shape}; the file is truncated or corrupt. Download it again."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DatasetError(f"IDX cannot store dtype {array.dtype}.")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    Path(path).write_bytes(payload)


CIFAR_IMAGE_BYTES = 32 * 32 * 3


def read_cifar_binary(path: str | os.PathLike, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR *binary version*.

    Each record is ``label_bytes`` label bytes (CIFAR-10: 1; CIFAR-100: 2, coarse
    then fine) followed by 3072 bytes of a 32×32 image stored channel-major (CHW).

    Returns:
      ``(images uint8 [N, 32, 32, 3], labels int32 [N])``; the last label byte
      (CIFAR-100: the fine label) is returned.
    """
    raw = _read_bytes(path)
    record = label_bytes + CIFAR_IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise DatasetError(
            f"{path} has {len(raw)} bytes, not a whole number of {record}-byte CIFAR records; the file is "
            "truncated or not the CIFAR binary version. Download the binary version again."
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int32)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def write_cifar_binary(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, label_bytes: int) -> None:
    """Write uint8 NHWC 32×32×3 images in the CIFAR binary format (for tests and exports)."""
    images = np.asarray(images, np.uint8)
    n = images.shape[0]
    records = np.zeros((n, label_bytes + CIFAR_IMAGE_BYTES), np.uint8)
    records[:, label_bytes - 1] = labels
    records[:, label_bytes:] = images.transpose(0, 3, 1, 2).reshape(n, -1)
    Path(path).write_bytes(records.tobytes())


def read_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file without unpickling anything.

    Raises:
      DatasetError: the file is missing, not a zip archive (e.g. a text or ``.npy`` file
        renamed to ``.npz``), damaged, holds a member that is not a ``.npy`` array, or
        holds object arrays (those would need unpickling).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} is a directory, not an .npz file." if path.is_dir() else f"no such file: {path}.")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(6)
        hint = " It is a single .npy array;" if head == b"\x93NUMPY" else " It may be truncated, or not an archive;"
        raise DatasetError(
            f"{path} is not a valid .npz (zip) file.{hint} write it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in f.files:
                try:
                    arrays[key] = f[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):  # numpy's refusal of object arrays
                        raise DatasetError(
                            f"{path} holds object arrays ({key!r}) that would need unpickling; save plain "
                            f"numeric arrays instead ({e})."
                        ) from e
                    raise DatasetError(f"{path}: member {key!r} is not a valid .npy array ({e}).") from e
                if not isinstance(arrays[key], np.ndarray):  # np.load hands non-.npy members back as bytes
                    raise DatasetError(f"{path}: member {key!r} is not a .npy array; write the file with np.savez.")
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError) as e:
        raise DatasetError(f"{path} is not a readable .npz file ({e}); it may be truncated or corrupt.") from e
    return arrays


def to_unit_float(images: np.ndarray, name: str = "images") -> np.ndarray:
    """uint8 (or already-[0,1] float) images to float32 in [0, 1].

    The one scaling rule: uint8 is divided by 255. Float images must already lie in
    [0, 1] and be finite; any other dtype (wider integers, bool) is refused, as its
    range cannot be known.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        out = images.astype(np.float32)
        out /= 255.0  # in place: one float copy of a 60k-image array is enough
        return out
    if np.issubdtype(images.dtype, np.floating):
        check_unit_range(images, name)
        return images.astype(np.float32, copy=False)
    raise DatasetError(
        f"{name} must be uint8 (0-255) or float in [0, 1]; got dtype {images.dtype}. "
        "Convert it before saving, e.g. x.astype(np.uint8) for 0-255 integer pixels."
    )


def load_image_folder(
    root: str | os.PathLike, image_size: int, class_dirs: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an ``root/<class>/<image>`` tree, resizing every image to a square.

    Images are resized on the shorter side and centre-cropped, the usual
    evaluation transform; colour mode is forced to RGB.

    Returns:
      ``(images uint8 [N, S, S, 3], labels int32 [N], class directory names)``.
    """
    root = Path(root)
    if class_dirs is None:
        class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not class_dirs:
        raise DatasetError(f"{root} has no class sub-directories; expected root/<class>/<image files>.")
    images, labels = [], []
    for label, name in enumerate(class_dirs):
        if not (root / name).is_dir():
            raise DatasetError(f"{root} has no directory {name}/ for class {label}; expected root/<class>/<images>.")
        for file in sorted((root / name).iterdir()):
            if not file.is_file():
                continue
            images.append(read_square_image(file, image_size))
            labels.append(label)
    if not images:
        raise DatasetError(f"{root} contains no image files.")
    return np.stack(images), np.asarray(labels, np.int32), class_dirs


def read_square_image(file: str | os.PathLike, image_size: int) -> np.ndarray:
    """One image file as uint8 RGB ``[S, S, 3]``: resized on its shorter side to ``image_size`` and
    centre-cropped (the usual evaluation transform).

    Raises:
      DatasetError: the file is missing or not an image PIL can decode.
    """
    from PIL import Image  # pillow comes with matplotlib; imported lazily as few users need it

    try:
        with Image.open(file) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = image_size / min(w, h)
            im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))))
            w, h = im.size
            left, top = (w - image_size) // 2, (h - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
            return np.asarray(im, np.uint8)
    except FileNotFoundError as e:
        raise DatasetError(f"image file {file} does not exist.") from e
    except OSError as e:
        raise DatasetError(f"cannot decode image {file} ({e}); remove or replace it.") from e
