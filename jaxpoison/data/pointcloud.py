"""Point clouds: the in-memory form, sampling and normalisation, and the ModelNet40 files.

A point-cloud dataset is a :class:`~jaxpoison.data.Dataset` of ``kind="features"`` whose
examples are ``[P, 3]`` arrays of ``(x, y, z)`` points (:func:`is_point_cloud`), each shape
centred on its mean and scaled into the unit sphere (:func:`normalize_points`). Normalisation
constants are ``mean = 0, std = 1`` per coordinate: the points are used as they are.

ModelNet40 comes in two standard distributions, both read here:

* **HDF5** (``modelnet40_ply_hdf5_2048``): ``ply_data_train{0..4}.h5`` and ``ply_data_test{0,1}.h5``,
  each holding ``data`` ``[n, 2048, 3]`` float32 and ``label`` ``[n, 1]`` integers, with the class
  names in ``shape_names.txt``. Reading them needs ``h5py`` (``pip install 'jaxpoison[pointcloud]'``).
* **resampled text** (``modelnet40_normal_resampled``): ``<class>/<class>_0001.txt`` with one
  ``x,y,z,nx,ny,nz`` line per point (10,000 points), the lists ``modelnet40_train.txt`` /
  ``modelnet40_test.txt`` (one ``<class>_<nnnn>`` per line) and ``modelnet40_shape_names.txt``.
  Normals are dropped.

Every shape is subsampled to ``points`` points (a seeded draw without replacement; all of them,
in order, when it has exactly that many), then centred and scaled to the unit sphere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from jaxpoison.data.dataset import Dataset, DatasetError, Provenance, check_labels


def is_point_cloud(dataset: Dataset) -> bool:
    """Whether ``dataset`` holds point clouds: ``kind="features"`` examples of shape ``[P, 3]``."""
    return dataset.kind == "features" and len(dataset.image_shape) == 2 and dataset.image_shape[-1] == 3


def require_point_clouds(dataset: Dataset, what: str) -> None:
    """Refuse a dataset that does not hold point clouds, naming the point-cloud method ``what``."""
    if not is_point_cloud(dataset):
        raise DatasetError(f"{what} needs point clouds (kind 'features', examples [P, 3]); this dataset holds "
                           f"{dataset.kind} of shape {dataset.image_shape}.")  # fmt: skip


def normalize_points(points) -> np.ndarray:
    """Centre each cloud on its mean and scale it so its farthest point is at distance 1.

    Args:
      points: ``[P, 3]`` or ``[N, P, 3]``.

    Returns:
      float32 array of the same shape. A cloud whose points all coincide is only centred.
    """
    x = np.asarray(points, np.float64)
    if x.ndim not in (2, 3) or x.shape[-1] != 3:
        raise DatasetError(f"point clouds must be [P, 3] or [N, P, 3]; got shape {x.shape}.")
    x = x - x.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(x, axis=-1).max(axis=-1, keepdims=True)[..., None]
    return (x / np.where(radius > 0, radius, 1.0)).astype(np.float32)


def sample_points(cloud, points: int, rng: np.random.Generator) -> np.ndarray:
    """``points`` points of one cloud ``[Q, ≥3]``: all of them in order when ``Q == points``, else a
    draw without replacement (sorted, so the original order is kept).

    Raises:
      DatasetError: the cloud has fewer points than asked for.
    """
    cloud = np.asarray(cloud)
    if cloud.shape[0] < points:
        raise DatasetError(f"a shape has {cloud.shape[0]} points but {points} were asked for; lower points.")
    if cloud.shape[0] == points:
        return cloud[:, :3]
    return cloud[np.sort(rng.choice(cloud.shape[0], points, replace=False)), :3]


def check_points_option(points) -> int:
    """``points`` as an int (≥ 1), or a :class:`DatasetError`."""
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 1:
        raise DatasetError(f"points (per shape) must be a positive integer; got {points!r}.")
    return int(points)


def point_cloud_dataset(clouds, labels, class_names, name: str, split: str, source: str, location: str = "") -> Dataset:
    """A point-cloud :class:`Dataset` from already-normalised clouds ``[N, P, 3]`` and labels ``[N]``."""
    clouds = np.asarray(clouds, np.float32)
    if clouds.ndim != 3 or clouds.shape[-1] != 3:
        raise DatasetError(f"point clouds must be [N, P, 3]; got shape {clouds.shape}.")
    labels = check_labels(labels, f"{split} labels of {location or name}", len(class_names))
    provenance = Provenance(source=source, name=name, split=split, location=str(location))
    return Dataset(clouds, labels, tuple(class_names), np.zeros(3, np.float32), np.ones(3, np.float32), provenance,
                   kind="features")  # fmt: skip


# --------------------------------------------------------------------------- ModelNet40: HDF5

H5_PATTERN = re.compile(r"ply_data_(train|test)(\d+)\.h5$")


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise DatasetError("reading the ModelNet40 HDF5 files needs h5py: pip install 'jaxpoison[pointcloud]' "
                           "(or pip install h5py).") from e  # fmt: skip
    return h5py


def modelnet_h5_files(directory: str | os.PathLike, split: str) -> list[Path]:
    """The ``ply_data_<split><i>.h5`` files of ``directory``, in numeric order."""
    directory = Path(directory)
    found = [(int(m.group(2)), p) for p in directory.glob("ply_data_*.h5")
             if (m := H5_PATTERN.search(p.name)) and m.group(1) == split]  # fmt: skip
    return [p for _, p in sorted(found)]


def read_modelnet_h5(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All shapes of one split of the HDF5 distribution: ``(points [N, Q, 3] float32, labels int64 [N])``.

    Raises:
      DatasetError: no files of the split, h5py missing, or a file without ``data`` / ``label``
        arrays that pair up.
    """
    files = modelnet_h5_files(directory, split)
    if not files:
        raise DatasetError(f"{directory} has no ply_data_{split}*.h5 files.")
    h5py = _h5py()
    clouds, labels = [], []
    for file in files:
        try:
            with h5py.File(file, "r") as f:
                if "data" not in f or "label" not in f:
                    raise DatasetError(f"{file} lacks the 'data' and 'label' arrays of the ModelNet40 HDF5 files; "
                                       f"it holds {sorted(f.keys())}.")  # fmt: skip
                data, label = np.asarray(f["data"]), np.asarray(f["label"])
        except OSError as e:
            raise DatasetError(f"cannot read {file} as HDF5 ({e}); download it again.") from e
        label = label.reshape(-1)
        if data.ndim != 3 or data.shape[-1] < 3 or data.shape[0] != label.shape[0]:
            raise DatasetError(f"{file}: data {data.shape} and label {label.shape} must be [n, Q, 3] and [n] "
                               "(or [n, 1]).")  # fmt: skip
        clouds.append(data[..., :3].astype(np.float32))
        labels.append(label.astype(np.int64))
    if len({c.shape[1] for c in clouds}) != 1:
        raise DatasetError(f"the {split} files of {directory} hold different numbers of points per shape.")
    return np.concatenate(clouds), np.concatenate(labels)


def read_shape_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per non-empty line of ``path`` (``shape_names.txt``)."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise DatasetError(f"cannot read the class list {path}: {e.strerror}.") from e
    if len(names) < 2:
        raise DatasetError(f"{path} lists {len(names)} class names; it needs one per line, at least 2.")
    return names


# --------------------------------------------------------------------------- ModelNet40: resampled text


def read_point_text(path: str | os.PathLike) -> np.ndarray:
    """One shape of the resampled-text distribution: ``[Q, 3]`` float32 (normals dropped).

    Lines are ``x,y,z[,nx,ny,nz]`` (commas or spaces).
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}. Check that the shape file exists.") from e
    try:
        rows = [[float(v) for v in re.split(r"[,\s]+", line.strip())] for line in text.splitlines() if line.strip()]
        array = np.asarray(rows, np.float64)
    except ValueError as e:
        raise DatasetError(f"{path} is not a list of x,y,z[,nx,ny,nz] lines ({e}).") from e
    if array.ndim != 2 or array.shape[1] < 3 or array.shape[0] == 0:
        raise DatasetError(f"{path} must hold one point per line with at least 3 numbers; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise DatasetError(f"{path} holds NaN or infinite coordinates.")
    return array[:, :3].astype(np.float32)


def read_modelnet_text(root: str | os.PathLike, split: str, class_names: list[str], points: int,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The shapes of ``modelnet40_<split>.txt`` under ``root``, subsampled to ``points``: ``(clouds, labels)``.

    Raises:
      DatasetError: the list file is missing, names an unknown class, or a shape file is missing.
    """
    root = Path(root)
    listing = root / f"modelnet40_{split}.txt"
    try:
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise DatasetError(f"cannot read the split list {listing}: {e.strerror}.") from e
    index = {c: i for i, c in enumerate(class_names)}
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    clouds, labels = [], []
    for name in names:
        cls = name.rsplit("_", 1)[0]
        if cls not in index:
            raise DatasetError(f"{listing} names shape {name!r} of class {cls!r}, which is not in the class list.")
        clouds.append(sample_points(read_point_text(root / cls / f"{name}.txt"), points, rng))
        labels.append(index[cls])
    if not clouds:
        raise DatasetError(f"{listing} lists no shapes.")
    return np.stack(clouds), np.asarray(labels, np.int64)
