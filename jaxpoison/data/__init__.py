"""Datasets: loading, the in-memory :class:`Dataset`, augmentation."""

from jaxpoison.data.augment import augment, augment_batch, normalize, random_crop, random_flip
from jaxpoison.data.dataset import KINDS, Dataset, DatasetError, Provenance, require_images, split_train_validation
from jaxpoison.data.formats import read_cifar_binary, read_idx, write_cifar_binary, write_idx
from jaxpoison.data.sources import (
    DATA_ENV,
    dataset_location,
    dataset_names,
    get_spec,
    load_dataset,
    load_splits,
    load_tfds,
    missing_message,
)
from jaxpoison.data.streamed import (
    ImageFolderRows,
    NpyShards,
    Overlay,
    RecordRows,
    RowSource,
    StreamedDataset,
    load_npy_shards,
    stream_tfds,
    write_npy_shards,
)
from jaxpoison.data.synthetic import synthetic_dataset

__all__ = [
    "DATA_ENV",
    "KINDS",
    "Dataset",
    "DatasetError",
    "ImageFolderRows",
    "NpyShards",
    "Overlay",
    "Provenance",
    "RecordRows",
    "RowSource",
    "StreamedDataset",
    "augment",
    "augment_batch",
    "dataset_location",
    "dataset_names",
    "get_spec",
    "load_dataset",
    "load_npy_shards",
    "load_splits",
    "load_tfds",
    "missing_message",
    "normalize",
    "random_crop",
    "random_flip",
    "read_cifar_binary",
    "read_idx",
    "require_images",
    "split_train_validation",
    "stream_tfds",
    "synthetic_dataset",
    "write_cifar_binary",
    "write_idx",
    "write_npy_shards",
]
