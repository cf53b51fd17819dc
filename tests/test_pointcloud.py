"""Point clouds: ModelNet40 loaders, the shapes3d set, PointNet (and its K-FAC capture), the point-cluster
trigger, poisoning, ASR, and the selection methods on point clouds."""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.attacks import (
    PointClusterTrigger,
    PoisonConfig,
    TriggerError,
    attack_metrics,
    load_trigger,
    point_patch,
    poison_dataset,
    save_trigger,
)
from jaxpoison.data import DatasetError, dataset_location, load_dataset, missing_message
from jaxpoison.data.pointcloud import is_point_cloud, normalize_points, point_cloud_dataset
from jaxpoison.data.shapes3d import SHAPES3D_CLASSES, shapes3d
from jaxpoison.influence import (
    FactorConfig,
    LissaConfig,
    cross_entropy,
    find_layers,
    fit_factors,
    layer_gradient,
    per_example_grads,
)
from jaxpoison.influence.capture import capture, per_example_layer_gradients
from jaxpoison.models import create_model, to_functional
from jaxpoison.selection import IFSConfig, SelectionError, select_poisons
from jaxpoison.training import adam_recipe, train
from tests.twins import assert_ekfac_eigenvalues_equal_dense

TINY_POINTNET = {"point_widths": (8, 16), "head_widths": (8,)}


def tiny_clouds(n=48, points=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    clouds = rng.normal(size=(n, points, 3)) * (1 + labels[:, None, None])  # classes differ in spread
    return point_cloud_dataset(normalize_points(clouds), labels, [f"c{c}" for c in range(classes)], "tiny", "train",
                               "test")  # fmt: skip


# --------------------------------------------------------------------------- the trigger


def test_point_trigger_is_deterministic_and_moves_a_small_cluster():
    a, b = point_patch(2.0), point_patch(2.0)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.count == 16 and a.describe()["radius"] <= 0.04 + 1e-6
    clouds = tiny_clouds().images[:4]
    once, again = np.asarray(a.apply(clouds)), np.asarray(b.apply(clouds))
    np.testing.assert_array_equal(once, again)
    moved = np.any(once != clouds, axis=-1)
    assert moved.sum(axis=1).max() <= 16 and moved.any()
    for cloud, out in zip(clouds, once, strict=True):  # the cluster sits at the fixed anchor
        assert np.linalg.norm(out[np.any(out != cloud, axis=-1)] - a.anchor, axis=-1).max() <= 0.04 + 1e-6
    surface = point_patch(2.0, on_surface=True)
    for cloud, out in zip(clouds, np.asarray(surface.apply(clouds)), strict=True):  # or on the nearest point
        centre = cloud[np.argmin(np.sum((cloud - surface.anchor) ** 2, axis=-1))]
        assert np.linalg.norm(out[np.any(out != cloud, axis=-1)] - centre, axis=-1).max() <= 0.04 + 1e-6
    np.testing.assert_array_equal(np.asarray(a.apply(clouds[0])), once[0])  # one cloud as in the batch
    assert point_patch(4.0).count == 32 and point_patch(1.0).count == 8


def test_point_trigger_refuses_what_it_cannot_trigger(tmp_path):
    with pytest.raises(TriggerError, match=r"point clouds \[P, 3\]"):
        point_patch(2.0).apply(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(TriggerError, match="moves 16 points but the clouds have only 10"):
        point_patch(2.0).apply(np.zeros((10, 3), np.float32))
    with pytest.raises(TriggerError, match="epsilon must be a positive"):
        point_patch(0.0)
    trigger = point_patch(2.0, on_surface=True)
    save_trigger(tmp_path / "t", trigger)
    loaded = load_trigger(tmp_path / "t")
    assert isinstance(loaded, PointClusterTrigger) and loaded.on_surface is True
    clouds = tiny_clouds().images[:2]
    np.testing.assert_array_equal(np.asarray(loaded.apply(clouds)), np.asarray(trigger.apply(clouds)))


def test_poisoning_and_asr_on_point_clouds_never_clip_coordinates():
    data = tiny_clouds()
    trigger = point_patch(2.0)
    poisoned = poison_dataset(data, trigger, PoisonConfig(target=0, count=6))
    assert np.all(poisoned.dataset.labels[poisoned.poison_indices] == 0)
    assert poisoned.dataset.images.min() < 0  # point coordinates are not pixels: nothing is clipped to [0, 1]
    assert poisoned.manifest["trigger"]["type"] == "point-cluster"
    images = tiny_clouds(points=32).replace(kind="features")
    with pytest.raises(DatasetError, match="needs image data"):
        from jaxpoison.attacks import patched

        poison_dataset(images, patched((8, 8, 3), 2), PoisonConfig(target=0, count=2))
    model = to_functional(create_model("pointnet", data.image_shape, 3, **TINY_POINTNET))
    metrics = attack_metrics(model, data, trigger, target=0)
    assert set(metrics["per_class_asr"]) == {1, 2} and 0.0 <= metrics["asr"] <= 1.0


# --------------------------------------------------------------------------- PointNet


def test_pointnet_shape_and_invariance_to_point_order():
    model = to_functional(create_model("pointnet", (64, 3), 5, seed=1))
    x = jax.random.normal(jax.random.key(0), (4, 64, 3))
    logits = model(x)
    assert logits.shape == (4, 5)
    shuffled = x[:, jax.random.permutation(jax.random.key(1), 64)]
    np.testing.assert_allclose(model(shuffled), logits, rtol=1e-5, atol=1e-5)
    assert model.features(x).shape == (4, 256)
    with pytest.raises(ValueError, match=r"pointnet takes point clouds"):
        create_model("pointnet", (8, 8, 3), 5)


def test_kfac_covers_every_pointnet_layer_without_an_untracked_warning():
    data = tiny_clouds(n=16, points=16)
    model = to_functional(create_model("pointnet", data.image_shape, 3, **TINY_POINTNET))
    layers, untracked = find_layers(model)
    assert untracked == [] and {layer.kind for layer in layers} == {"dense"}
    assert [layer.name for layer in layers] == ["classifier", "head_layers.0", "point_layers.0", "point_layers.1"] \
        or len(layers) == 4  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        factors = fit_factors(model, data, FactorConfig(batch_size=8), progress=False)
    assert {layer.name for layer in factors.layers} == {layer.name for layer in layers}


def _f64_pointnet():
    data = tiny_clouds(n=6, points=5)
    model = to_functional(create_model("pointnet", data.image_shape, 3, seed=2, **TINY_POINTNET))
    model = model.replace(params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.params))
    return data, model, jnp.asarray(data.images, jnp.float64), jnp.asarray(data.labels)


def test_pointnet_captured_per_example_gradients_equal_vmap_grad():
    with jax.enable_x64(True):
        _, model, x, y = _f64_pointnet()
        layers, _ = find_layers(model)
        _, captured = capture(model, layers, x, y, cross_entropy)
        reference = per_example_grads(model.bind(), cross_entropy, model.params, x, y)
        for layer in layers:  # the shared per-point layers sum their per-point contributions
            got = per_example_layer_gradients(*captured[layer.name])
            np.testing.assert_allclose(got, layer_gradient(reference, layer), rtol=1e-9, atol=1e-12,
                                       err_msg=layer.name)  # fmt: skip


def test_pointnet_ekfac_equals_the_dense_construction():
    with jax.enable_x64(True):
        data, model, x, y = _f64_pointnet()
        data64 = data.replace(images=np.asarray(data.images, np.float64))
        factors = fit_factors(model, data64, FactorConfig(strategy="ekfac", fisher="empirical", batch_size=3),
                              progress=False)  # fmt: skip
        reference = jax.jit(lambda p: per_example_grads(model.bind(), cross_entropy, p, x, y))(model.params)
        assert_ekfac_eigenvalues_equal_dense(factors, reference)


# --------------------------------------------------------------------------- datasets


def test_shapes3d_is_deterministic_normalised_and_has_twelve_shapes():
    a, b = shapes3d("train", points=64, per_class=3), shapes3d("train", points=64, per_class=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.class_names == SHAPES3D_CLASSES and len(SHAPES3D_CLASSES) >= 10 and len(a) == 36
    np.testing.assert_array_equal(np.bincount(a.labels), [3] * 12)
    np.testing.assert_allclose(a.images.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a.images, axis=-1).max(axis=1), 1, rtol=1e-5)
    test = shapes3d("test", points=64, per_class=3)
    assert not np.array_equal(a.images, test.images) and is_point_cloud(a)
    assert not np.array_equal(a.images, shapes3d("train", points=64, per_class=3, seed=1).images)
    loaded = load_dataset("shapes3d", "train", points=64, per_class=3)
    assert loaded.content_hash == a.content_hash and dataset_location("shapes3d")


def _raw_shapes(rng, n, q):
    return (rng.normal(size=(n, q, 3)) * 5 + 3).astype(np.float32)  # off-centre and large: loaders normalise


def test_modelnet40_from_hdf5_files(no_local_data):
    h5py = pytest.importorskip("h5py")
    d = no_local_data / "modelnet40" / "modelnet40_ply_hdf5_2048"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("ply_data_train0.h5", 5), ("ply_data_train1.h5", 3), ("ply_data_test0.h5", 4)):
        with h5py.File(d / name, "w") as f:
            f["data"] = _raw_shapes(rng, n, 40)
            f["label"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
    (d / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    train = load_dataset("modelnet40", "train", points=16)
    test = load_dataset("modelnet40", "test", points=16)
    assert (len(train), len(test)) == (8, 4) and train.image_shape == (16, 3) and train.class_names[1] == "bathtub"
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 0, 1, 2]  # file 0 before file 1
    np.testing.assert_allclose(train.images.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(train.images, axis=-1).max(axis=1), 1, rtol=1e-5)
    assert "(h5)" in dataset_location("modelnet40")
    np.testing.assert_array_equal(load_dataset("modelnet40", "train", points=16).images, train.images)


def test_modelnet40_hdf5_needs_h5py_and_says_which_extra(no_local_data, monkeypatch):
    d = no_local_data / "modelnet40_ply_hdf5_2048"
    d.mkdir()
    for name in ("ply_data_train0.h5", "ply_data_test0.h5"):
        (d / name).write_bytes(b"")
    (d / "shape_names.txt").write_text("a\nb\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(DatasetError, match=r"needs h5py: pip install 'jaxpoison\[pointcloud\]'"):
        load_dataset("modelnet40", "train")


def test_modelnet40_from_resampled_text(no_local_data):
    d = no_local_data / "modelnet40" / "modelnet40_normal_resampled"
    rng = np.random.default_rng(1)
    names = {"train": ["chair_0001", "chair_0002", "cup_0001"], "test": ["cup_0002"]}
    for split, shapes in names.items():
        for shape in shapes:
            cls = shape.rsplit("_", 1)[0]
            (d / cls).mkdir(parents=True, exist_ok=True)
            rows = np.concatenate([_raw_shapes(rng, 1, 30)[0], rng.normal(size=(30, 3))], axis=1)  # with normals
            (d / cls / f"{shape}.txt").write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows))
        (d / f"modelnet40_{split}.txt").write_text("\n".join(shapes) + "\n")
    (d / "modelnet40_shape_names.txt").write_text("chair\ncup\n")
    train = load_dataset("modelnet40", "train", points=30)
    assert train.labels.tolist() == [0, 0, 1] and train.image_shape == (30, 3)
    np.testing.assert_allclose(np.linalg.norm(train.images, axis=-1).max(axis=1), 1, rtol=1e-5)
    assert load_dataset("modelnet40", "test", points=10).image_shape == (10, 3)
    (d / "cup" / "cup_0002.txt").unlink()
    with pytest.raises(DatasetError, match=r"cup_0002.txt"):
        load_dataset("modelnet40", "test", points=10)
    with pytest.raises(DatasetError, match="has 30 points but 64 were asked for"):
        load_dataset("modelnet40", "train", points=64)


def test_missing_modelnet40_names_the_files(no_local_data):
    with pytest.raises(DatasetError) as error:
        load_dataset("modelnet40", "train")
    for needle in ("ply_data_train0.h5", "shape_names.txt", "modelnet40_train.txt", "<class>/<class>_0001.txt"):
        assert needle in str(error.value)
    assert missing_message("modelnet40") in str(error.value) and dataset_location("modelnet40") is None


# --------------------------------------------------------------------------- selection on point clouds


TINY_PROXY = {"model": "pointnet", "model_kwargs": TINY_POINTNET, "batch_size": 32}


def _selection_config(method):
    from jaxpoison.selection import FUSConfig, RDConfig

    lissa = LissaConfig(damping=0.01, scale=25.0, depth=5, batch_size=32)
    configs = {"rs": None, "fus": FUSConfig(rounds=1, epochs=2, **TINY_PROXY),
               "rd": RDConfig(rounds=1, score_epochs=1, **TINY_PROXY),
               "ifs": IFSConfig(eta=2, surrogate_epochs=1, validation_size=16, lissa=lissa, **TINY_PROXY)}  # fmt: skip
    return configs[method]


@pytest.mark.filterwarnings("ignore:LiSSA has not settled")
@pytest.mark.parametrize("method", ["rs", "fus", "rd", "ifs"])
def test_selection_methods_run_on_point_clouds(method):
    data = shapes3d("train", points=32, per_class=8)
    chosen = select_poisons(method, data, point_patch(2.0), 0, 0.05, _selection_config(method), seed=0,
                            progress=False)  # fmt: skip
    assert chosen.indices.size == round(0.05 * len(data)) and np.all(data.labels[chosen.indices] != 0)


def test_hfe_refuses_point_clouds_with_the_papers_reason():
    data = shapes3d("train", points=32, per_class=2)
    with pytest.raises(SelectionError, match="not suitable for 3D point cloud tasks"):
        select_poisons("hfe", data, point_patch(2.0), 0, 0.05)
    with pytest.raises(SelectionError, match="not suitable for 3D point cloud tasks"):
        select_poisons("hfe_asc", data, point_patch(2.0), 0, 0.05)


def test_default_selection_configs_train_pointnet_proxies_on_point_clouds(monkeypatch):
    from jaxpoison.selection import registry

    seen = {}
    monkeypatch.setattr(registry, "ifs_selection", lambda d, t, target, rate, c, **kw: seen.setdefault("c", c))
    select_poisons("ifs", shapes3d("train", points=32, per_class=2), point_patch(2.0), 0, 0.05)
    assert seen["c"].model == "pointnet_small"


@pytest.mark.slow
def test_a_pointnet_learns_the_point_cluster_backdoor():
    train_set, test_set = shapes3d("train", points=128), shapes3d("test", points=128)
    trigger = point_patch(4.0)
    poisoned = poison_dataset(train_set, trigger, PoisonConfig(target=0, rate=0.05))
    model = to_functional(create_model("pointnet_small", train_set.image_shape, 12))
    model = train(model, poisoned.dataset, adam_recipe(epochs=15, batch_size=32), progress=False).model
    metrics = attack_metrics(model, test_set, trigger, target=0)
    assert metrics["asr"] > 0.5 and metrics["clean_accuracy"] > 0.4


def test_select_command_on_point_clouds(tmp_path, capsys):
    import json

    from jaxpoison.cli import main

    out = tmp_path / "sel"
    assert main(["select", "--method", "rs", "--dataset", "shapes3d", "--attack", "patched", "--epsilon", "2",
                 "--rate", "0.01", "--out", str(out)]) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trigger"]["type"] == "point-cluster" and manifest["trigger"]["points"] == 16
    capsys.readouterr()
    assert main(["select", "--method", "hfe", "--dataset", "shapes3d", "--attack", "patched", "--epsilon", "2",
                 "--rate", "0.01", "--out", str(tmp_path / "hfe")]) == 2  # fmt: skip
    assert "not suitable for 3D point cloud tasks" in capsys.readouterr().err
    assert main(["select", "--method", "rs", "--dataset", "shapes3d", "--attack", "blended", "--epsilon", "0.1",
                 "--rate", "0.01", "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert "point clouds take --attack patched" in capsys.readouterr().err


def test_influence_thresholds_take_point_cloud_test_points():
    from jaxpoison.detection.threshold import ekfac_threshold

    data = tiny_clouds(n=24, points=16)
    model = to_functional(create_model("pointnet", data.image_shape, 3, **TINY_POINTNET))
    factors = fit_factors(model, data, FactorConfig(batch_size=8), progress=False)
    several = ekfac_threshold(model, data, data.images[:2], 0, factors, progress=False)
    one = ekfac_threshold(model, data, data.images[0], 0, factors, progress=False)
    assert several.scores.shape == one.scores.shape == (24,)
    with pytest.raises(ValueError, match=r"one example \[16, 3\] or several \[k, 16, 3\]"):
        ekfac_threshold(model, data, data.images[:2, :8], 0, factors, progress=False)


def test_the_point_cloud_presets_build_the_point_trigger():
    from jaxpoison.experiments.presets import get_preset
    from jaxpoison.experiments.victim import make_trigger

    for name in ("modelnet40-patched-ifs", "shapes3d-patched-ifs"):
        config = get_preset(name)
        assert config.selection == "ifs" and config.attack.epsilon == 2.0
        trigger = make_trigger(config.attack, tiny_clouds(points=32), None, seed=0, progress=False)
        assert isinstance(trigger, PointClusterTrigger) and trigger.count == 16
