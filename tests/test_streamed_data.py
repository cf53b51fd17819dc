"""Training sets read from disk batch by batch give the in-memory numbers; poisons are an overlay."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpoison.attacks import PoisonConfig, PoisonError, badnet_pixels, poison_dataset, poison_streamed
from jaxpoison.data import (
    DatasetError,
    ImageFolderRows,
    NpyShards,
    Overlay,
    StreamedDataset,
    load_dataset,
    load_npy_shards,
    write_npy_shards,
)
from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
from jaxpoison.models import create_model, to_functional
from jaxpoison.training import TrainRecipe, train


@pytest.fixture(scope="module")
def digits_on_disk(tmp_path_factory):
    """Digits as uint8 shards of uneven sizes, and the same pixels in memory."""
    clean = load_dataset("digits", "train").first(300)
    pixels = np.round(clean.images * 255).astype(np.uint8)
    directory = tmp_path_factory.mktemp("shards")
    write_npy_shards(directory, [pixels[:100], pixels[100:130], pixels[130:]], labels=clean.labels)
    memory = clean.replace(images=pixels.astype(np.float32) / np.float32(255))
    return load_npy_shards(directory, clean.class_names, mean=clean.mean, std=clean.std), memory


def test_rows_are_read_across_shards_in_any_order(digits_on_disk):
    streamed, memory = digits_on_disk
    assert len(streamed) == 300 and streamed.image_shape == (8, 8, 1) and streamed.images.dtype == np.float32
    for rows in ([0, 1, 2], [99, 100, 129, 130, 299], [250, 3, 3, 120, -1], np.arange(300)):
        np.testing.assert_array_equal(streamed.images[np.asarray(rows)], memory.images[np.asarray(rows)])
    np.testing.assert_array_equal(streamed.images[10:20], memory.images[10:20])
    with pytest.raises(DatasetError, match="out of range"):
        streamed.images[np.array([300])]


def test_float_shards_pass_through_and_bad_shards_say_what_is_wrong(tmp_path):
    values = np.random.default_rng(0).random((7, 3, 2), dtype=np.float32)
    write_npy_shards(tmp_path / "f", [values[:4], values[4:]])
    np.testing.assert_array_equal(NpyShards(tmp_path / "f")[np.arange(7)], values)
    write_npy_shards(tmp_path / "mixed", [values[:4], values[4:, :2]])
    with pytest.raises(DatasetError, match="Every shard must hold rows of one shape"):
        NpyShards(tmp_path / "mixed")
    with pytest.raises(DatasetError, match="uint8 pixels or float32"):
        write_npy_shards(tmp_path / "ints", [np.zeros((2, 2), np.int64)])
    with pytest.raises(DatasetError, match=r"has no shards\.json"):
        NpyShards(tmp_path)


def test_the_content_hash_is_stable_and_sees_every_change(digits_on_disk):
    streamed, memory = digits_on_disk
    again = load_npy_shards(streamed.images.directory, memory.class_names, mean=memory.mean, std=memory.std)
    assert again.content_hash == streamed.content_hash == memory.content_hash  # the content, however stored
    changed = again.with_overlay([5], lambda x: 1.0 - x)
    assert changed.content_hash != again.content_hash
    np.testing.assert_allclose(changed.images[np.array([4, 5])], [memory.images[4], 1.0 - memory.images[5]])
    relabelled = again.with_overlay([], lambda x: x, labels=np.roll(memory.labels, 1))
    assert relabelled.content_hash != again.content_hash


def test_a_streamed_poisoning_is_the_in_memory_one_without_copying_the_inputs(digits_on_disk):
    streamed, memory = digits_on_disk
    trigger, config = badnet_pixels(memory.image_shape), PoisonConfig(target=0, rate=0.05, seed=3)
    overlay, copied = poison_streamed(streamed, trigger, config), poison_dataset(memory, trigger, config)
    np.testing.assert_array_equal(overlay.poison_indices, copied.poison_indices)
    np.testing.assert_array_equal(overlay.dataset.labels, copied.dataset.labels)
    np.testing.assert_allclose(overlay.dataset.images[np.arange(300)], copied.dataset.images, atol=1e-7)
    assert isinstance(overlay.dataset.images, Overlay) and overlay.dataset.images.base is streamed.images
    assert overlay.dataset.content_hash == copied.dataset.content_hash != streamed.content_hash
    with pytest.raises(PoisonError, match="appending would copy it"):
        poison_streamed(streamed, trigger, PoisonConfig(target=0, rate=0.05, mode="append"))
    with pytest.raises(PoisonError, match="use poison_dataset"):
        poison_streamed(memory, trigger, config)


def test_training_factors_and_scores_from_disk_equal_the_in_memory_ones(digits_on_disk):
    streamed, memory = digits_on_disk
    model = to_functional(create_model("mlp", memory.image_shape, 10), memory.mean, memory.std)
    recipe = TrainRecipe(optimizer="adam", learning_rate=1e-2, epochs=1, batch_size=50, weight_decay=0.0,
                         milestones=(), crop_padding=0, flip=False)  # fmt: skip
    a = train(model, streamed, recipe, seed=0, progress=False)
    b = train(model, memory, recipe, seed=0, progress=False)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    for x, y in zip(jax.tree.leaves(a.model.params), jax.tree.leaves(b.model.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    trained = b.model
    config = FactorConfig(batch_size=64)
    fa = fit_factors(trained, streamed, config, progress=False)
    fb = fit_factors(trained, memory, config, progress=False)
    for name in fb.blocks:
        for key in fb.blocks[name]:
            np.testing.assert_array_equal(np.asarray(fa.blocks[name][key]), np.asarray(fb.blocks[name][key]))
    queries = memory.images[:3], memory.labels[:3]
    sa = pairwise_scores(trained, streamed, *queries, fb, ScoreConfig(batch_size=64), progress=False)
    sb = pairwise_scores(trained, memory, *queries, fb, ScoreConfig(batch_size=64), progress=False)
    np.testing.assert_array_equal(np.asarray(sa.values), np.asarray(sb.values))


def test_image_folder_rows_decode_and_resize_as_they_are_read(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    rows = ImageFolderRows(paths, size=8)
    assert rows.shape == (4, 8, 8, 3) and rows[np.array([2, 0])].shape == (2, 8, 8, 3)
    exact = ImageFolderRows(paths[:1], channels=3)
    np.testing.assert_allclose(exact[np.array([0])][0] * 255, np.asarray(Image.open(paths[0])), atol=1e-4)
    dataset = StreamedDataset(rows, np.array([0, 1, 0, 1]), ("a", "b"), 0.5, 0.25, memory_provenance())
    assert dataset.image_shape == (8, 8, 3) and len(dataset.content_hash) == 16
    with pytest.raises(DatasetError, match="RowSource"):
        StreamedDataset([[0.5]] * 4, np.zeros(4, np.int32), ("a", "b"), 0.5, 0.25, memory_provenance())


def memory_provenance():
    from jaxpoison.data import Provenance

    return Provenance("test", "folder", "train")


def test_record_rows_read_a_tfds_data_source_row_by_row(no_local_data):
    import tensorflow_datasets as tfds

    from jaxpoison.data import RecordRows, stream_tfds

    with tfds.testing.mock_data(num_examples=9):
        streamed = stream_tfds("mnist", "train")
        source = tfds.data_source("mnist", split="train")
        assert len(streamed) == 9 and streamed.image_shape == (28, 28, 1) and streamed.num_classes == 10
        second = np.asarray(source[1]["image"]) / np.float32(255)
        np.testing.assert_array_equal(streamed.images[np.array([4, 1])][1], second)
        assert streamed.labels.tolist() == [int(source[i]["label"]) for i in range(9)]
        resized = stream_tfds("mnist", "train", image_size=14)
        assert resized.images[np.array([0])].shape == (1, 14, 14, 1)
    plain = RecordRows([{"x": np.full((2, 3), 0.5, np.float32)}] * 3, key="x")
    assert plain.shape == (3, 2, 3, 1) and float(plain[np.array([2])].max()) == 0.5
    with pytest.raises(DatasetError, match="no 'image' entry"):
        RecordRows([{"x": 1}])
