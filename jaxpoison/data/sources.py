"""Named datasets and where to find them.

``load_dataset(name, split)`` returns a :class:`~jaxpoison.data.Dataset` from the
first place that has the data:

* ``digits``: scikit-learn's bundled 8×8 digits (always available; fixed split).
* ``fashion_mnist``, ``mnist``: IDX ``.gz`` files in ``$JAXPOISON_DATA/<name>``,
  ``$JAXPOISON_DATA``, or Debian's ``/usr/share/datasets/<name>``; else TFDS.
* ``cifar10``, ``cifar100``: the official *binary version* directory under
  ``$JAXPOISON_DATA``; else TFDS.
* ``imagenette``: an image-folder tree ``$JAXPOISON_DATA/imagenette2*/{train,val}``;
  else TFDS (``imagenette/160px-v2``). Resized to ``image_size``.
* ``imagenet10``: ten ImageNet classes in ``$JAXPOISON_DATA/imagenet10/{train,val}/<wnid>/``,
  resized to ``image_size`` (default 224); ``classes`` chooses the wnids.
* ``raf_db``: RAF-DB's seven basic expressions, ``basic/EmoLabel/list_patition_label.txt`` and
  ``basic/Image/aligned/`` under ``$JAXPOISON_DATA/raf_db``; resized to ``image_size`` (default 100).
* ``npz``: your own arrays, ``load_dataset("npz", path=...)``.

TFDS datasets are read with ``tfds.data_source`` (no TensorFlow needed to read);
preparing them once needs the ``tfds-prepare`` extra. When nothing is found the
error says exactly how to get the data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxpoison.data.dataset import Dataset, DatasetError, Provenance, check_image_layout, check_labels
from jaxpoison.data.formats import (
    load_image_folder,
    read_cifar_binary,
    read_idx,
    read_npz_arrays,
    read_square_image,
    to_unit_float,
)
from jaxpoison.data.pointcloud import (
    check_points_option,
    modelnet_h5_files,
    normalize_points,
    point_cloud_dataset,
    read_modelnet_h5,
    read_modelnet_text,
    read_shape_names,
    sample_points,
)
from jaxpoison.data.shapes3d import SHAPES3D_CLASSES, SHAPES3D_POINTS, shapes3d
from jaxpoison.progress import progress_bar

DATA_ENV = "JAXPOISON_DATA"
DEBIAN_DATASETS = Path("/usr/share/datasets")
SPLITS = ("train", "test")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
    crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
    lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
    oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)
IMAGENETTE_WNIDS = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888605": "parachute",
}  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What jaxpoison knows about a named dataset.

    Attributes:
      name: registry name.
      image_shape: ``(H, W, C)`` of the images as loaded (default size for imagenette), or
        ``(points, 3)`` of a point cloud.
      class_names: the classes, in label order.
      mean, std: per-channel normalisation constants (``None``: computed from the train split).
      loader: ``(split, **options) -> Dataset``.
      how_to_get: instructions printed when the data is missing.
      locate: ``() -> str | None``, where the data would be read from, without reading it.
      options: the keyword options ``loader`` takes; :func:`load_dataset` refuses others
        rather than ignore them.
    """

    name: str
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    loader: Callable[..., Dataset]
    how_to_get: str
    locate: Callable[[], str | None]
    options: tuple[str, ...] = ()


_REGISTRY: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def dataset_names() -> tuple[str, ...]:
    """All registered dataset names."""
    return tuple(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; a clear error lists the known names."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose 'train' or 'test'.")


def _make(name, split, source, location, images, labels, class_names, mean, std,
          image_name: str | None = None, label_name: str | None = None) -> Dataset:  # fmt: skip
    # Checked here, with the file in the message, before Dataset repeats the checks anonymously.
    image_name = image_name or f"{split} images of {location}"
    images = to_unit_float(images, image_name)
    check_image_layout(images.shape, image_name)
    labels = check_labels(labels, label_name or f"{split} labels of {location}", len(class_names))
    return Dataset(
        images=images,
        labels=labels,
        class_names=tuple(class_names),
        mean=np.asarray(mean, np.float32),
        std=np.asarray(std, np.float32),
        provenance=Provenance(source=source, name=name, split=split, location=str(location)),
    )


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = to_unit_float(images)
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def _search_dirs(name: str, extra: tuple[Path, ...] = ()) -> list[Path]:
    dirs = []
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
        dirs += [root / name, root]
    return dirs + list(extra)


# --------------------------------------------------------------------------- TFDS


def _tfds_data_dir() -> str | None:
    return os.environ.get("TFDS_DATA_DIR")


def _tfds_prepared(tfds_name: str) -> bool:
    try:
        import absl.logging
        import tensorflow_datasets as tfds

        # An unprepared builder logs a warning about missing metadata; absence is the answer here.
        level = absl.logging.get_verbosity()
        absl.logging.set_verbosity(absl.logging.ERROR)
        try:
            return tfds.builder(tfds_name, data_dir=_tfds_data_dir()).is_prepared()
        finally:
            absl.logging.set_verbosity(level)
    except Exception:  # unknown builder, broken install: treat as absent
        return False


class TfdsUnavailable(DatasetError):
    """The named TFDS dataset is not prepared in the TFDS data directory."""


def load_tfds(
    tfds_name: str, split: str, image_key: str = "image", label_key: str = "label", image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a prepared TFDS dataset with ``tfds.data_source`` (no TensorFlow needed).

    Never downloads: a dataset that is not prepared raises :class:`TfdsUnavailable`.

    Returns:
      ``(images uint8 [N, H, W, C], labels int32 [N], class names from the TFDS metadata)``.
    """
    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=_tfds_data_dir(), download=False)
    except Exception as e:  # tfds raises assorted errors for unprepared or unknown datasets
        raise TfdsUnavailable(f"TFDS dataset {tfds_name} is not prepared here ({type(e).__name__}).") from e
    images, labels = [], []
    for i in progress_bar(range(len(source)), desc=f"reading {tfds_name}/{split}", mininterval=2.0):
        example = source[i]
        image = np.asarray(example[image_key])
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            image = _resize_uint8(image, image_size)
        images.append(image)
        labels.append(int(example[label_key]))
    if not images:
        raise DatasetError(f"TFDS dataset {tfds_name}/{split} is empty.")
    names: tuple[str, ...] = ()
    try:
        names = tuple(tfds.builder(tfds_name, data_dir=_tfds_data_dir()).info.features[label_key].names)
    except Exception:  # metadata-less builders (e.g. under tfds.testing.mock_data)
        pass
    return np.stack(images), np.asarray(labels, np.int32), names


def _from_tfds(name: str, tfds_name: str, split: str, classes, mean, std, test_split="test", **kw) -> Dataset:
    try:
        images, labels, _ = load_tfds(tfds_name, "train" if split == "train" else test_split, **kw)
    except TfdsUnavailable as e:
        raise DatasetError(missing_message(name)) from e
    return _make(name, split, "tfds", f"tfds:{tfds_name}", images, labels, classes, mean, std)


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image.squeeze()).convert("RGB").resize((size, size)), np.uint8)


# --------------------------------------------------------------------------- digits


def _load_digits(split: str, **_) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    # A fixed stratified split: 1437 train / 360 test.
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=360, stratify=bunch.target, random_state=0
    )
    idx = train_idx if split == "train" else test_idx
    mean, std = _channel_stats(images[train_idx])
    return _make("digits", split, "digits", "sklearn.datasets.load_digits", images[idx], bunch.target[idx],
                 [str(d) for d in range(10)], mean, std)  # fmt: skip


_register(
    DatasetSpec(
        name="digits",
        image_shape=(8, 8, 1),
        class_names=tuple(str(d) for d in range(10)),
        mean=None,
        std=None,
        loader=_load_digits,
        how_to_get="bundled with scikit-learn; always available.",
        locate=lambda: "scikit-learn (bundled)",
    )
)


# --------------------------------------------------------------------------- MNIST family (IDX)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_dir(name: str) -> Path | None:
    for d in _search_dirs(name, (DEBIAN_DATASETS / name.replace("_", "-"),)):
        for suffix in (".gz", ""):
            if all((d / (f + suffix)).is_file() for pair in _IDX_FILES.values() for f in pair):
                return d
    return None


def _idx_file(directory: Path, stem: str) -> Path:
    gz = directory / (stem + ".gz")
    return gz if gz.is_file() else directory / stem


def _mnist_family(name: str, classes, mean, std, debian_package: str | None):
    def locate() -> str | None:
        d = _find_idx_dir(name)
        if d is not None:
            return str(d)
        return f"tfds:{name}" if _tfds_prepared(name) else None

    def load(split: str, **_) -> Dataset:
        d = _find_idx_dir(name)
        if d is not None:
            image_file, label_file = (_idx_file(d, f) for f in _IDX_FILES[split])
            images, labels = read_idx(image_file), read_idx(label_file)
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise DatasetError(
                    f"{image_file} and {label_file} do not pair up: image array {images.shape}, "
                    f"label array {labels.shape}. Use matching IDX files."
                )
            return _make(name, split, "idx", d, images[..., None], labels, classes, mean, std,
                         image_name=str(image_file), label_name=str(label_file))  # fmt: skip
        return _from_tfds(name, name, split, classes, mean, std)

    apt = f"  * as root on Debian/Ubuntu: apt-get install {debian_package}\n" if debian_package else ""
    how = (
        f"{apt}"
        f"  * put the four IDX files ({', '.join(f + '.gz' for pair in _IDX_FILES.values() for f in pair)}) "
        f"in ${DATA_ENV}/{name}/\n"
        f"  * or prepare it with TFDS: pip install 'jaxpoison[tfds-prepare]' && "
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\""
    )
    return DatasetSpec(name, (28, 28, 1), classes, mean, std, load, how, locate)


_register(_mnist_family("fashion_mnist", FASHION_MNIST_CLASSES, (0.2860,), (0.3530,), "dataset-fashion-mnist"))
_register(_mnist_family("mnist", tuple(str(d) for d in range(10)), (0.1307,), (0.3081,), None))


# --------------------------------------------------------------------------- CIFAR (binary version)

_CIFAR = {
    # name: (binary dir, train files, test files, label bytes, classes, mean, std)
    "cifar10": (
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
        CIFAR10_CLASSES,
        (0.49147, 0.48226, 0.44677),
        (0.24703, 0.24349, 0.26159),
    ),
    "cifar100": (
        "cifar-100-binary",
        ("train.bin",),
        ("test.bin",),
        2,
        CIFAR100_CLASSES,
        (0.50716, 0.48669, 0.44120),
        (0.26733, 0.25644, 0.27615),
    ),
}


def _cifar(name: str) -> DatasetSpec:
    dirname, train_files, test_files, label_bytes, classes, mean, std = _CIFAR[name]

    def find_dir() -> Path | None:
        for d in _search_dirs(name):
            for candidate in (d / dirname, d):
                if all((candidate / f).is_file() for f in train_files + test_files):
                    return candidate
        return None

    def locate() -> str | None:
        d = find_dir()
        if d is not None:
            return str(d)
        return f"tfds:{name}" if _tfds_prepared(name) else None

    def load(split: str, **_) -> Dataset:
        d = find_dir()
        if d is not None:
            parts = [read_cifar_binary(d / f, label_bytes) for f in (train_files if split == "train" else test_files)]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            return _make(name, split, "cifar-binary", d, images, labels, classes, mean, std)
        return _from_tfds(name, name, split, classes, mean, std)

    how = (
        f"  * unpack the official CIFAR *binary version* so that ${DATA_ENV}/{dirname}/ holds "
        f"{', '.join(train_files + test_files)} (the Python/pickle version is not read)\n"
        f"  * or prepare it with TFDS: pip install 'jaxpoison[tfds-prepare]' && "
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\""
    )
    return DatasetSpec(name, (32, 32, 3), classes, mean, std, load, how, locate)


_register(_cifar("cifar10"))
_register(_cifar("cifar100"))


# --------------------------------------------------------------------------- Imagenette

_IMAGENETTE_TFDS = "imagenette/160px-v2"


def _find_imagenette_dir() -> Path | None:
    for d in _search_dirs("imagenette"):
        for candidate in [d, *sorted(d.glob("imagenette2*"))] if d.is_dir() else []:
            if (candidate / "train").is_dir() and (candidate / "val").is_dir():
                return candidate
    return None


def _load_imagenette(split: str, image_size: int = 160, **_) -> Dataset:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DatasetError(f"imagenette image_size must be a positive integer (pixels); got {image_size!r}.")
    classes = tuple(IMAGENETTE_WNIDS.values())
    d = _find_imagenette_dir()
    if d is not None:
        images, labels, _ = load_image_folder(
            d / ("train" if split == "train" else "val"), image_size, class_dirs=sorted(IMAGENETTE_WNIDS)
        )
        return _make("imagenette", split, "image-folder", d, images, labels, classes, IMAGENET_MEAN, IMAGENET_STD)
    return _from_tfds("imagenette", _IMAGENETTE_TFDS, split, classes, IMAGENET_MEAN, IMAGENET_STD,
                      test_split="validation", image_size=image_size)  # fmt: skip


_register(
    DatasetSpec(
        name="imagenette",
        image_shape=(160, 160, 3),
        class_names=tuple(IMAGENETTE_WNIDS.values()),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        loader=_load_imagenette,
        how_to_get=(
            f"  * unpack imagenette2-160 so that ${DATA_ENV}/imagenette2-160/{{train,val}}/<wnid>/*.JPEG exist\n"
            f"  * or prepare it with TFDS: pip install 'jaxpoison[tfds-prepare]' && "
            "python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{_IMAGENETTE_TFDS}').download_and_prepare()\""
        ),
        locate=lambda: (str(_find_imagenette_dir()) if _find_imagenette_dir() else None)
        or (f"tfds:{_IMAGENETTE_TFDS}" if _tfds_prepared(_IMAGENETTE_TFDS) else None),
        options=("image_size",),
    )
)


# --------------------------------------------------------------------------- ImageNet-10 (image folders)

# The IFS paper does not list its ten classes. These are the ImageNet-10 of the deep-clustering
# literature (Chang et al., "Deep Adaptive Image Clustering", ICCV 2017), the subset usually meant
# by the name; pass classes=[...] for another choice of ten (or any number of) ImageNet wnids.
IMAGENET10_WNIDS = {
    "n02056570": "king penguin", "n02085936": "Maltese dog", "n02128757": "snow leopard",
    "n02690373": "airliner", "n02692877": "airship", "n03095699": "container ship",
    "n04254680": "soccer ball", "n04285008": "sports car", "n04467665": "trailer truck",
    "n07747607": "orange",
}  # fmt: skip
IMAGENET10_SIZE = 224  # the usual ImageNet input (and the ResNet-18 setting of the selection papers)


def _check_image_size(name: str, image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DatasetError(f"{name} image_size must be a positive integer (pixels); got {image_size!r}.")
    return int(image_size)


def _imagenet10_classes(classes) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` of the chosen classes (default :data:`IMAGENET10_WNIDS`)."""
    if classes is None:
        return list(IMAGENET10_WNIDS), list(IMAGENET10_WNIDS.values())
    if isinstance(classes, (str, bytes)) or len(classes) < 2 or len(set(classes)) != len(classes):
        raise DatasetError(f"imagenet10 classes must be a list of at least 2 distinct ImageNet wnids; got {classes!r}.")
    wnids = [str(c) for c in classes]
    return wnids, [IMAGENET10_WNIDS.get(w, w) for w in wnids]


def _find_imagenet10_dir(wnids=None) -> Path | None:
    wnids = list(IMAGENET10_WNIDS) if wnids is None else wnids
    for d in _search_dirs("imagenet10", ()):
        for candidate in (d, d / "imagenet-10", d / "ImageNet-10"):
            if all((candidate / split / w).is_dir() for split in ("train", "val") for w in wnids):
                return candidate
    return None


def _load_imagenet10(split: str, image_size: int = IMAGENET10_SIZE, classes=None, **_) -> Dataset:
    image_size = _check_image_size("imagenet10", image_size)
    wnids, names = _imagenet10_classes(classes)
    d = _find_imagenet10_dir(wnids)
    if d is None:
        raise DatasetError(missing_message("imagenet10")
                           + ("" if classes is None else f"\n  (with the classes asked for: {', '.join(wnids)})"))
    folder = d / ("train" if split == "train" else "val")
    images, labels, _ = load_image_folder(folder, image_size, class_dirs=wnids)
    return _make("imagenet10", split, "image-folder", d, images, labels, names, IMAGENET_MEAN, IMAGENET_STD)


_register(
    DatasetSpec(
        name="imagenet10",
        image_shape=(IMAGENET10_SIZE, IMAGENET10_SIZE, 3),
        class_names=tuple(IMAGENET10_WNIDS.values()),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        loader=_load_imagenet10,
        how_to_get=(
            "  ImageNet-10 is ten ImageNet-1k classes (ILSVRC2012; ImageNet's licence: download it yourself from\n"
            "  image-net.org). Put the images of each class in one folder per WordNet id:\n"
            f"    ${DATA_ENV}/imagenet10/train/<wnid>/*.JPEG  (the class's ILSVRC2012 training images, 1300 each)\n"
            f"    ${DATA_ENV}/imagenet10/val/<wnid>/*.JPEG    (its 50 validation images, sorted into class\n"
            "                                               folders by the ILSVRC2012 validation labels)\n"
            "  for these ten classes (the ImageNet-10 of the clustering literature; the IFS paper does not\n"
            "  name its ten, and load_dataset('imagenet10', classes=[...]) takes another list of wnids):\n"
            + "".join(f"    {w}  {n}\n" for w, n in IMAGENET10_WNIDS.items())
            + f"  Images are resized on the shorter side and centre-cropped to image_size (default {IMAGENET10_SIZE})."
        ),
        locate=lambda: str(_find_imagenet10_dir()) if _find_imagenet10_dir() else None,
        options=("image_size", "classes"),
    )
)


# --------------------------------------------------------------------------- RAF-DB (basic emotions)

RAFDB_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")  # labels 1-7 in the list
RAFDB_SIZE = 100  # the aligned faces are 100×100
RAFDB_LIST = "list_patition_label.txt"  # sic: the file's name in the distribution


def _rafdb_layout(root: Path) -> tuple[Path, Path] | None:
    """``(split list, aligned image dir)`` under ``root`` in any of the distribution's layouts, or ``None``."""
    for base in (root / "basic", root):
        for listing in (base / "EmoLabel" / RAFDB_LIST, base / RAFDB_LIST):
            aligned = base / "Image" / "aligned"
            if listing.is_file() and aligned.is_dir():
                return listing, aligned
    return None


def _find_rafdb() -> tuple[Path, Path] | None:
    for d in _search_dirs("raf_db", ()):
        for candidate in (d, d / "RAF-DB", d / "rafdb", d / "RAF_DB"):
            found = _rafdb_layout(candidate)
            if found is not None:
                return found
    return None


def read_rafdb_list(path: Path, split: str) -> list[tuple[str, int]]:
    """``(file name, label 0-6)`` of every entry of ``split`` in RAF-DB's ``list_patition_label.txt``.

    Lines read ``train_00001.jpg 5`` or ``test_0001.jpg 1``, labels 1-7 in the order of :data:`RAFDB_CLASSES`.

    Raises:
      DatasetError: a line that is not ``name label`` with a label in 1-7.
    """
    entries = []
    prefix = "train_" if split == "train" else "test_"
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 7:
            raise DatasetError(f"{path}:{number}: expected '<image name> <label 1-7>'; got {line.strip()!r}.")
        if parts[0].startswith(prefix):
            entries.append((parts[0], int(parts[1]) - 1))
    if not entries:
        raise DatasetError(f"{path} lists no {split} images (names starting with {prefix!r}).")
    return entries


def _load_rafdb(split: str, image_size: int = RAFDB_SIZE, **_) -> Dataset:
    image_size = _check_image_size("raf_db", image_size)
    found = _find_rafdb()
    if found is None:
        raise DatasetError(missing_message("raf_db"))
    listing, aligned = found
    images, labels = [], []
    for name, label in read_rafdb_list(listing, split):
        stem = name.rsplit(".", 1)[0]
        file = aligned / f"{stem}_aligned.jpg"
        if not file.is_file() and (aligned / name).is_file():
            file = aligned / name
        if not file.is_file():
            raise DatasetError(f"{listing} lists {name} but {aligned / (stem + '_aligned.jpg')} does not exist; "
                               "unpack all of basic/Image/aligned.zip there.")  # fmt: skip
        images.append(read_square_image(file, image_size))
        labels.append(label)
    return _make("raf_db", split, "raf-db", listing.parent.parent if listing.parent.name == "EmoLabel" else
                 listing.parent, np.stack(images), np.asarray(labels, np.int32), RAFDB_CLASSES, IMAGENET_MEAN,
                 IMAGENET_STD)  # fmt: skip


_register(
    DatasetSpec(
        name="raf_db",
        image_shape=(RAFDB_SIZE, RAFDB_SIZE, 3),
        class_names=RAFDB_CLASSES,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        loader=_load_rafdb,
        how_to_get=(
            "  RAF-DB (Real-world Affective Faces, basic emotions) is released on request by its authors\n"
            "  (whdeng.cn/RAF); download the 'basic' part and unpack it so that these exist:\n"
            f"    ${DATA_ENV}/raf_db/basic/EmoLabel/{RAFDB_LIST}   (lines 'train_00001.jpg 5', "
            "labels 1-7)\n"
            f"    ${DATA_ENV}/raf_db/basic/Image/aligned/train_00001_aligned.jpg ... test_3068_aligned.jpg\n"
            "  (unpack Image/aligned.zip; 12,271 train and 3,068 test faces, 100×100). A tree without the\n"
            f"  basic/ level (raf_db/EmoLabel/..., raf_db/Image/aligned/...) works too. Seven classes:\n"
            f"  {', '.join(f'{i + 1}={c}' for i, c in enumerate(RAFDB_CLASSES))}. Faces are resized to\n"
            f"  image_size (default {RAFDB_SIZE}, their own size)."
        ),
        locate=lambda: str(_find_rafdb()[0]) if _find_rafdb() else None,
        options=("image_size",),
    )
)


# --------------------------------------------------------------------------- point clouds

MODELNET_POINTS = 1024  # points per shape, the PointNet setting
# The class order of the distributions' shape_names.txt (the loader reads the file itself).
MODELNET40_CLASSES = tuple(
    """airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door dresser flower_pot
    glass_box guitar keyboard lamp laptop mantel monitor night_stand person piano plant radio range_hood sink sofa
    stairs stool table tent toilet tv_stand vase wardrobe xbox""".split()
)
MODELNET_H5_DIR = "modelnet40_ply_hdf5_2048"
MODELNET_TEXT_DIR = "modelnet40_normal_resampled"


def _find_modelnet() -> tuple[str, Path] | None:
    """``("h5" | "text", directory)`` of the first ModelNet40 distribution found, or ``None``."""
    for d in _search_dirs("modelnet40", ()):
        for candidate in (d / MODELNET_H5_DIR, d):
            if (candidate / "shape_names.txt").is_file() and modelnet_h5_files(candidate, "train") \
                    and modelnet_h5_files(candidate, "test"):  # fmt: skip
                return "h5", candidate
        for candidate in (d / MODELNET_TEXT_DIR, d):
            if all((candidate / f"modelnet40_{f}.txt").is_file() for f in ("train", "test", "shape_names")):
                return "text", candidate
    return None


def _load_modelnet40(split: str, points: int = MODELNET_POINTS, seed: int = 0, **_) -> Dataset:
    points = check_points_option(points)
    found = _find_modelnet()
    if found is None:
        raise DatasetError(missing_message("modelnet40"))
    layout, d = found
    if layout == "h5":
        names = read_shape_names(d / "shape_names.txt")
        clouds, labels = read_modelnet_h5(d, "train" if split == "train" else "test")
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise DatasetError(f"{d}: labels run from {labels.min()} to {labels.max()} but shape_names.txt names "
                               f"{len(names)} classes.")  # fmt: skip
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        clouds = np.stack([sample_points(c, points, rng) for c in clouds])
    else:
        names = read_shape_names(d / "modelnet40_shape_names.txt")
        clouds, labels = read_modelnet_text(d, split, names, points, seed)
    return point_cloud_dataset(normalize_points(clouds), labels, names, "modelnet40", split, f"modelnet40-{layout}",
                               str(d))  # fmt: skip


_register(
    DatasetSpec(
        name="modelnet40",
        image_shape=(MODELNET_POINTS, 3),
        class_names=MODELNET40_CLASSES,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        loader=_load_modelnet40,
        how_to_get=(
            "  ModelNet40 (Princeton, 12,311 CAD shapes in 40 classes) in either standard distribution:\n"
            f"  * HDF5 (needs h5py: pip install 'jaxpoison[pointcloud]'): unpack {MODELNET_H5_DIR}.zip so that\n"
            f"    ${DATA_ENV}/modelnet40/{MODELNET_H5_DIR}/ holds ply_data_train0.h5 ... ply_data_train4.h5,\n"
            "    ply_data_test0.h5, ply_data_test1.h5 and shape_names.txt (2,048 points per shape)\n"
            f"  * resampled text: unpack {MODELNET_TEXT_DIR}.zip so that ${DATA_ENV}/modelnet40/{MODELNET_TEXT_DIR}/\n"
            "    holds modelnet40_train.txt, modelnet40_test.txt, modelnet40_shape_names.txt and\n"
            "    <class>/<class>_0001.txt (one 'x,y,z,nx,ny,nz' line per point; normals are dropped)\n"
            f"  Each shape is subsampled to `points` points (default {MODELNET_POINTS}; a seeded draw), centred and\n"
            "  scaled into the unit sphere. No download here: `jaxpoison datasets` lists shapes3d as an embedded\n"
            "  stand-in."
        ),
        locate=lambda: (lambda f: f"{f[1]} ({f[0]})" if f else None)(_find_modelnet()),
        options=("points", "seed"),
    )
)


def _load_shapes3d(split: str, points: int = SHAPES3D_POINTS, per_class: int | None = None, seed: int = 0,
                   noise: float = 0.01, **_) -> Dataset:  # fmt: skip
    return shapes3d(split, points=points, per_class=per_class, seed=seed, noise=noise)


_register(
    DatasetSpec(
        name="shapes3d",
        image_shape=(SHAPES3D_POINTS, 3),
        class_names=SHAPES3D_CLASSES,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        loader=_load_shapes3d,
        how_to_get="generated by jaxpoison (point clouds of 12 geometric shapes); always available.",
        locate=lambda: "generated (jaxpoison.data.shapes3d)",
        options=("points", "per_class", "seed", "noise"),
    )
)


# --------------------------------------------------------------------------- user arrays (.npz)


def _npz_images(path, key: str, x: np.ndarray) -> np.ndarray:
    where = f"{path}: {key}"
    if x.ndim >= 1 and x.shape[0] == 0:
        raise DatasetError(f"{where} holds no examples (shape {x.shape}); each split needs at least one image.")
    if x.ndim not in (3, 4):
        raise DatasetError(
            f"{where} must be 4-D NHWC [N, H, W, C] (or 3-D [N, H, W] for grayscale); got shape {x.shape}. "
            "Reshape flat vectors to images before saving."
        )
    x = x[..., None] if x.ndim == 3 else x
    check_image_layout(x.shape, where)
    return to_unit_float(x, where)


def _npz_class_names(path, labels: dict[str, np.ndarray], class_names) -> list[str]:
    if class_names is not None:
        if isinstance(class_names, (str, bytes)):
            raise DatasetError(f"class_names must be a list of names, not one string; got {class_names!r}.")
        names = [str(c) for c in class_names]
        for split, y in labels.items():
            if y.max() >= len(names):
                raise DatasetError(
                    f"{path}: y_{split} holds label {y.max()} but only {len(names)} class_names were given; "
                    "give one name per class."
                )
        return names
    present = np.unique(labels["train"])
    n = int(present[-1]) + 1
    if n < 2:
        raise DatasetError(f"{path}: y_train holds a single class ({present[0]}); a dataset needs at least 2.")
    if present.size != n:
        # Among the first present.size + 5 integers at least 5 are absent: enough examples, bounded work.
        absent = np.setdiff1d(np.arange(min(n, present.size + 5)), present)
        raise DatasetError(
            f"{path}: y_train uses labels up to {n - 1} but {n - present.size} of those {n} classes have no "
            f"training example (e.g. {absent[:5].tolist()}). Labels must run 0..K-1 with every class in y_train "
            "(1-based labels? subtract 1), or pass class_names to name every class."
        )
    if labels["test"].max() >= n:
        raise DatasetError(
            f"{path}: y_test holds label {labels['test'].max()} but the training labels only cover classes "
            f"0..{n - 1}; train and test must share one set of classes. Fix the labels, or pass class_names."
        )
    return [str(c) for c in range(n)]


def _load_npz(split: str, path: str | os.PathLike | None = None, class_names=None, **_) -> Dataset:
    """``.npz`` with ``x_train, y_train, x_test, y_test``.

    Images are uint8 (divided by 255) or float already in [0, 1], NHWC or NHW (grayscale);
    channel-first arrays are refused. Labels must be an integer array (float labels are
    refused, never truncated). Without ``class_names`` the classes are ``0..max(y_train)``,
    each present in ``y_train``. Both splits are checked whichever is loaded: they must share
    an image shape and classes.
    """
    if path is None:
        raise DatasetError("the npz dataset needs a file: load_dataset('npz', split, path='arrays.npz').")
    arrays = read_npz_arrays(path)
    needed = ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in needed if k not in arrays]
    if missing:
        found = f"Found {sorted(arrays)}" if arrays else "It holds no arrays at all"
        raise DatasetError(f"{path} lacks arrays {missing}; it must hold {', '.join(needed)}. {found}.")
    images = {s: _npz_images(path, f"x_{s}", arrays[f"x_{s}"]) for s in SPLITS}
    labels = {s: check_labels(arrays[f"y_{s}"], f"{path}: y_{s}") for s in SPLITS}
    for s in SPLITS:
        if labels[s].shape[0] != images[s].shape[0]:
            raise DatasetError(
                f"{path}: x_{s} holds {images[s].shape[0]} images but y_{s} holds {labels[s].shape[0]} labels; "
                "they must pair up one to one."
            )
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise DatasetError(
            f"{path}: x_train images have shape {images['train'].shape[1:]} but x_test images "
            f"{images['test'].shape[1:]}; both splits must share one image shape (H, W, C)."
        )
    names = _npz_class_names(path, labels, class_names)
    mean, std = images["train"].mean(axis=(0, 1, 2)), images["train"].std(axis=(0, 1, 2))
    if np.any(std == 0):
        raise DatasetError(
            f"{path}: x_train is constant in channel(s) {np.flatnonzero(std == 0).tolist()} (std 0), so it cannot "
            "be normalised; check that the array holds the real images."
        )
    return _make("npz", split, "npz", path, images[split], labels[split], names, mean, std,
                 image_name=f"{path}: x_{split}", label_name=f"{path}: y_{split}")  # fmt: skip


_register(
    DatasetSpec(
        name="npz",
        image_shape=(0, 0, 0),
        class_names=(),
        mean=None,
        std=None,
        loader=_load_npz,
        how_to_get="pass path=... to load_dataset (or --data-path on the command line).",
        locate=lambda: None,
        options=("path", "class_names"),
    )
)


# --------------------------------------------------------------------------- public API


def missing_message(name: str) -> str:
    """How to get dataset ``name``, as shown when it is not available."""
    spec = get_spec(name)
    return f"dataset {name!r} is not available on this machine. To get it:\n{spec.how_to_get}"


def dataset_location(name: str) -> str | None:
    """Where ``name`` would be read from, or ``None`` when it is not available."""
    return get_spec(name).locate()


def load_dataset(name: str, split: str = "train", **options) -> Dataset:
    """Load split ``split`` (``"train"`` or ``"test"``) of dataset ``name``.

    Args:
      name: one of :func:`dataset_names`.
      split: ``"train"`` or ``"test"``.
      **options: loader options: ``path`` and ``class_names`` for ``npz``,
        ``image_size`` for ``imagenette``, ``imagenet10`` (with ``classes``) and ``raf_db``;
        ``points`` and ``seed`` for ``modelnet40`` and ``shapes3d`` (with ``per_class`` and
        ``noise``); any other option is refused.

    Raises:
      DatasetError: unknown name or split, unreadable files, or data not
        available here (the message says how to get it).
    """
    spec = get_spec(name)
    _check_split(split)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        # An ignored option (a path, a size) would leave the caller believing it was applied.
        takes = f"it takes {', '.join(spec.options)}" if spec.options else "it takes none"
        hint = " (--data-path is only for --dataset npz)" if "path" in unknown else ""
        raise DatasetError(f"dataset {name!r} has no option {', '.join(unknown)}; {takes}{hint}.")
    return spec.loader(split, **options)


def load_splits(name: str, **options) -> tuple[Dataset, Dataset]:
    """``(train, test)`` of dataset ``name``."""
    return load_dataset(name, "train", **options), load_dataset(name, "test", **options)
