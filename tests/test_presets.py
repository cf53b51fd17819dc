"""The paper presets: the reference's settings, and exact poison counts on the real data path.

The data-path tests write small CIFAR-10/100 *binary version* trees (the format the real
loader reads) in which the source class is large enough for the preset's stated count, and
run the preset's own ``load_data`` → ``poison_stage`` on them, without overriding the attack.
Every generated image carries its index in two pixels, so validation images can be traced
back to the original training set.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxpoison.data import Dataset, Provenance, split_train_validation, write_cifar_binary
from jaxpoison.detection.transforms import REFERENCE_TRANSFORM_NAMES
from jaxpoison.experiments import presets as presets_module
from jaxpoison.experiments import victim as victim_module
from jaxpoison.experiments.config import AttackConfig, VictimConfig, apply_overrides, to_dict
from jaxpoison.experiments.presets import get_preset
from jaxpoison.experiments.store import RunStore
from jaxpoison.experiments.victim import init_model, load_data, make_trigger, poison_stage

# What the Δ-Influence reference code runs (research notes, section 1): source → target,
# exact poison count, Δ-Influence τ / n_tol / label rule, and whether vertical flips are used.
REFERENCE = {
    "cifar10-badnet-paper": dict(attack="badnet", dataset="cifar10", source=8, target=5, count=500, tau=0.0, n_tol=2,
                                 label_rule="uniform", vflip=True, classes=10, source_images=5000),
    "cifar100-smooth-paper": dict(attack="smooth", dataset="cifar100", source=86, target=68, count=125, tau=-40.0,
                                  n_tol=0, label_rule="distinct", vflip=False, classes=100, source_images=500),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_paper_preset_matches_the_reference(name):
    ref, config = REFERENCE[name], get_preset(name)
    attack = config.attack
    assert (attack.name, attack.source, attack.target, attack.count) == (
        ref["attack"], ref["source"], ref["target"], ref["count"],
    )  # fmt: skip
    assert config.selection == "rs" and config.data.name == ref["dataset"]
    # ResNet-18, SGD (Nesterov) 0.1, 40 epochs at batch 128, lr ×0.1 at 14/25/35, ±4 px shift + flips
    victim, recipe = config.victim, config.victim.recipe
    assert (victim.model, recipe.optimizer, recipe.learning_rate, recipe.epochs, recipe.batch_size) == (
        "resnet18", "sgd", 0.1, 40, 128,
    )  # fmt: skip
    assert recipe.weight_decay == 5e-4 and tuple(recipe.milestones) == (14, 25, 35)
    assert (recipe.crop_padding, recipe.flip, recipe.vflip) == (4, True, ref["vflip"])
    assert recipe.nesterov and recipe.momentum == 0.9
    # kronfluence's EK-FAC default damping; Δ-Influence transforms the normalised tensor
    detection = config.detection
    assert detection.scores.damping == 1e-8 and detection.ekfac_threshold == 10.0  # the reference's "score > 10"
    assert detection.factors.strategy == "ekfac" and detection.scores.measurement == "margin"
    assert detection.test_points == 1 and "delta_influence" in detection.methods
    delta = detection.delta
    assert (delta.n_b, delta.tau, delta.n_tol, delta.label_rule, delta.space, delta.modify) == (
        50, ref["tau"], ref["n_tol"], ref["label_rule"], "normalized", "both",
    )  # fmt: skip
    assert delta.transforms == REFERENCE_TRANSFORM_NAMES and len(delta.transforms) == 7  # no separate rotation
    # a stated count, so the 5 % validation split cannot shrink the attack
    assert config.data.validation_fraction == 0.05 and config.data.train_size is None
    # the preset survives the JSON/--set round trip unchanged
    assert apply_overrides(config, []) == config


def test_cifar10_badnet_reference_trigger_and_threshold():
    config = get_preset("cifar10-badnet-paper")
    trigger = make_trigger(config.attack, _labels_only(10, 1, image_shape=(32, 32, 3)), None, 0, False)
    # the reference's 4 black pixels at (28, 30), (29, 29), (30, 28), (30, 30)
    assert sorted(zip(*np.nonzero(trigger.mask[..., 0]), strict=True)) == [(28, 30), (29, 29), (30, 28), (30, 30)]
    assert np.all(trigger.pattern == 0.0)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_validation_split_leaves_the_documented_training_set(name):
    """On the real CIFAR class sizes the 5 % split leaves 47,500 images and room for every poison."""
    ref, config = REFERENCE[name], get_preset(name)
    full = _labels_only(ref["classes"], 50_000 // ref["classes"])
    train, validation = split_train_validation(full, config.data.validation_fraction, config.seed)
    assert (len(train), len(validation)) == (47_500, 2_500)
    source_left = int(np.sum(train.labels == ref["source"]))
    assert source_left == round(0.95 * ref["source_images"]) and source_left >= config.attack.count


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_paper_preset_poisons_exactly_its_count_from_the_source_outside_validation(name, tmp_path, monkeypatch):
    ref, config = REFERENCE[name], get_preset(name)
    raw_images, raw_labels = _write_cifar(tmp_path / "data", ref["dataset"], ref["classes"], ref["source"],
                                          source_size=ref["count"] + 40)  # fmt: skip
    monkeypatch.setenv("JAXPOISON_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))

    splits = load_data(config.data, config.seed)
    assert splits.train.provenance.source == "cifar-binary" and splits.validation is not None
    assert len(splits.train) + len(splits.validation) == raw_labels.size

    clean = None
    if ref["attack"] == "smooth":  # the trigger is fitted against a clean model; an untrained linear one will do
        clean = init_model(VictimConfig(model="logreg"), splits.train, config.seed)
    store = RunStore(tmp_path / "run", to_dict(config))
    _, poisoning = poison_stage(store, config, splits, clean, "clean-key", progress=False)

    poisons = poisoning.poison_indices
    assert poisons.size == ref["count"] == len(np.unique(poisons))
    assert np.all(splits.train.labels[poisons] == ref["source"])  # all drawn from the source class
    assert np.all(poisoning.dataset.labels[poisons] == ref["target"])
    others = np.setdiff1d(np.arange(len(splits.train)), poisons)
    np.testing.assert_array_equal(poisoning.dataset.labels[others], splits.train.labels[others])
    np.testing.assert_array_equal(poisoning.dataset.images[others], splits.train.images[others])
    assert not np.allclose(poisoning.dataset.images[poisons], splits.train.images[poisons])

    # the validation split holds clean originals only, and none of them was poisoned
    validation_ids = _ids(splits.validation.images)
    poisoned_ids = _ids(splits.train.images[poisons])
    assert not set(validation_ids) & set(poisoned_ids)
    np.testing.assert_array_equal(splits.validation.images, raw_images[validation_ids])
    np.testing.assert_array_equal(splits.validation.labels, raw_labels[validation_ids])


def test_source_specific_smooth_trigger_is_fitted_outside_the_source_class(monkeypatch):
    seen = {}

    def fake_fit(logits, images, target, **kwargs):
        seen["images"], seen["target"] = np.asarray(images), target
        return "trigger"

    monkeypatch.setattr(victim_module, "make_smooth_trigger", fake_fit)
    train = _labels_only(10, 30, image_shape=(4, 4, 3), unique=True)
    source_specific = AttackConfig("smooth", target=5, source=8)
    assert make_trigger(source_specific, train, None, 0, False) == "trigger"
    keep = (train.labels != 5) & (train.labels != 8)
    np.testing.assert_array_equal(seen["images"], train.images[keep][:100])
    assert seen["target"] == 5

    # all-to-one: the first 100 non-target images, as before
    make_trigger(AttackConfig("smooth", target=5), train, None, 0, False)
    np.testing.assert_array_equal(seen["images"], train.images[train.labels != 5][:100])


def test_paper_presets_state_their_deviations():
    """Each paper preset's comment names the deviations a reader must know about."""
    import inspect

    source = inspect.getsource(presets_module)
    for phrase in ("47,500", "grid_sample", "random.seed(3)", "random.seed(917)", "minmax(x + v)", "vertical flip"):
        assert phrase in source, phrase


# --------------------------------------------------------------------------- helpers


def _labels_only(num_classes: int, per_class: int, image_shape=(1, 1, 1), unique: bool = False) -> Dataset:
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    labels = np.random.default_rng(0).permutation(labels)
    if unique:
        images = np.random.default_rng(1).random((labels.size, *image_shape), dtype=np.float32)
    else:
        images = np.zeros((labels.size, *image_shape), np.float32)
    channels = image_shape[-1]
    return Dataset(images=images, labels=labels, class_names=tuple(str(c) for c in range(num_classes)),
                   mean=np.full(channels, 0.5, np.float32), std=np.full(channels, 0.25, np.float32),
                   provenance=Provenance("synthetic", "synthetic", "train"))  # fmt: skip


def _ids(images: np.ndarray) -> np.ndarray:
    """The index written into pixels (0, 0) and (0, 1) of channel 0 by :func:`_write_cifar`."""
    pixels = np.rint(np.asarray(images)[:, 0, :2, 0] * 255).astype(np.int64)
    return pixels[:, 0] * 256 + pixels[:, 1]


def _write_cifar(root, dataset: str, num_classes: int, source: int, source_size: int, per_class: int = 4):
    """A small CIFAR binary tree: ``source_size`` source-class images, ``per_class`` of every other class.

    Returns the training images (float, as the loader reads them) and labels, in file order.
    """
    rng = np.random.default_rng(7)
    labels = np.concatenate([np.full(source_size if c == source else per_class, c) for c in range(num_classes)])
    labels = rng.permutation(labels).astype(np.int32)
    images = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
    ids = np.arange(labels.size)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = ids // 256, ids % 256
    test_labels = np.arange(2 * num_classes) % num_classes
    test_images = rng.integers(0, 256, (test_labels.size, 32, 32, 3), dtype=np.uint8)
    if dataset == "cifar10":
        directory, label_bytes = root / "cifar-10-batches-bin", 1
        directory.mkdir(parents=True)
        for part, chunk in enumerate(np.array_split(ids, 5), start=1):
            write_cifar_binary(directory / f"data_batch_{part}.bin", images[chunk], labels[chunk], label_bytes)
        write_cifar_binary(directory / "test_batch.bin", test_images, test_labels, label_bytes)
    else:
        directory, label_bytes = root / "cifar-100-binary", 2
        directory.mkdir(parents=True)
        write_cifar_binary(directory / "train.bin", images, labels, label_bytes)
        write_cifar_binary(directory / "test.bin", test_images, test_labels, label_bytes)
    return images.astype(np.float32) / 255.0, labels
