"""The attack half of a run: data splits, the clean model, the poisoned set, the victim, the test point.

Each step is a stage of a :class:`~jaxpoison.experiments.store.RunStore`, so its
artifacts are written once and reused. The poisoned training set is stored compactly
(the poisoned images and all labels), the trigger as ``trigger.npz`` + ``trigger.json``,
models as Orbax checkpoints of ``(params, state)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxpoison.attacks import (
    PoisonConfig,
    Trigger,
    all_to_all_metrics,
    all_to_all_targets,
    apply_brew,
    attack_metrics,
    badnet_pixels,
    blended,
    brew_poisons,
    candidate_pool,
    load_trigger,
    make_smooth_trigger,
    parse_position,
    patched,
    point_patch,
    poison_all_to_all,
    poison_dataset,
    save_trigger,
    square_patch,
    triggered_inputs,
)
from jaxpoison.data import Dataset, load_splits, split_train_validation
from jaxpoison.data.pointcloud import is_point_cloud
from jaxpoison.errors import InputError
from jaxpoison.experiments.config import (
    DATA_OPTIONS,
    AttackConfig,
    ConfigError,
    DataConfig,
    RunConfig,
    VictimConfig,
    validate_classes,
)
from jaxpoison.experiments.store import RunStore
from jaxpoison.fileio import save_arrays
from jaxpoison.models import FunctionalModel, create_model, to_functional
from jaxpoison.selection import select_poisons
from jaxpoison.training import evaluate, predict_logits, train
from jaxpoison.training.checkpoint import load_tree, save_tree


class Splits(NamedTuple):
    """Clean ``train`` (what gets poisoned), held-out ``validation`` (model selection), ``test``."""

    train: Dataset
    validation: Dataset | None
    test: Dataset


class Poisoning(NamedTuple):
    """The poisoned training set and what the defender does not know.

    Attributes:
      dataset: the poisoned training set.
      poison_indices: ground-truth poison positions in ``dataset``.
      trigger: the trigger (``None`` for Witches' Brew, which has no trigger).
      target: the class the attack aims at (the intended class for Witches' Brew; ``None`` for
        the all-to-all attack, whose target is each image's class + 1 mod C).
      brew_target: the Witches' Brew target test index (``None`` otherwise).
      all_to_all: the all-to-all attack (:mod:`jaxpoison.attacks.all_to_all`).
    """

    dataset: Dataset
    poison_indices: np.ndarray
    trigger: Trigger | None
    target: int | None
    brew_target: int | None
    all_to_all: bool = False


def load_data(config: DataConfig, seed: int = 0) -> Splits:
    """Load, optionally shorten, and split off the validation share of the training set."""
    train_set, test_set = load_splits(config.name, **config.loader_options())
    if config.train_size is not None:
        train_set = train_set.first(config.train_size)
    if config.test_size is not None:
        test_set = test_set.first(config.test_size)
    validation = None
    if config.validation_fraction > 0:
        train_set, validation = split_train_validation(train_set, config.validation_fraction, seed)
    return Splits(train_set, validation, test_set)


def init_model(config: VictimConfig, dataset: Dataset, seed: int) -> FunctionalModel:
    """A freshly initialised model, normalising its inputs with ``dataset``'s constants."""
    module = create_model(config.model, dataset.image_shape, dataset.num_classes, seed=seed)
    return to_functional(module, dataset.mean, dataset.std)


def save_model(directory: Path, model: FunctionalModel) -> None:
    save_tree(Path(directory) / "model", {"params": model.params, "state": model.state})


def load_model(directory: Path, template: FunctionalModel) -> FunctionalModel:
    """Restore ``(params, state)`` saved by :func:`save_model` into the structure of ``template``."""
    restored = load_tree(Path(directory) / "model", {"params": template.params, "state": template.state},
                         what="model parameters")  # fmt: skip
    return template.replace(params=restored["params"], state=restored["state"])


def fit_model(config: VictimConfig, dataset: Dataset, seed: int, progress: bool) -> FunctionalModel:
    model = init_model(config, dataset, seed)
    return train(model, dataset, config.recipe, seed=seed, progress=progress).model


def accuracy(model: FunctionalModel, dataset: Dataset) -> float:
    return evaluate(model, dataset).accuracy


# --------------------------------------------------------------------------- stages


def clean_inputs(config: RunConfig, splits: Splits) -> dict:
    """What the clean model depends on (its stage key): data, victim recipe, seed, training set — never the attack."""
    # Loader options enter the key only when set, so runs from before they existed keep their keys.
    data = {k: v for k, v in dataclasses.asdict(config.data).items() if k not in DATA_OPTIONS or v is not None}
    return {"data": data, "victim": dataclasses.asdict(config.victim), "seed": config.seed,
            "train_hash": splits.train.content_hash}  # fmt: skip


def clean_stage(store: RunStore, config: RunConfig, splits: Splits, progress: bool) -> tuple[str, FunctionalModel]:
    """Train the unpoisoned model (the reference point for clean accuracy; smooth/brew attack it)."""
    inputs = clean_inputs(config, splits)

    def compute(directory: Path) -> dict:
        model = fit_model(config.victim, splits.train, config.seed, progress)
        save_model(directory, model)
        return {"clean_accuracy": accuracy(model, splits.test)}

    key, _ = store.run("clean", inputs, compute)
    return key, load_model(store.path("clean"), init_model(config.victim, splits.train, config.seed))


def poison_budget(attack: AttackConfig, train_size: int) -> int:
    """How many training images the attack poisons: ``attack.count``, else ``attack.rate`` of them."""
    return attack.count if attack.count is not None else max(1, round(attack.rate * train_size))


def validate_against_data(config: RunConfig, splits: Splits) -> None:
    """Everything about ``config`` that the data decides, checked before any stage runs.

    The attack's classes exist, the poison budget fits the pool it is drawn from, and a
    training batch fits the training set — so a run never trains a clean model only to find
    that its attack cannot be built.
    """
    train = splits.train
    validate_classes(config, train.num_classes)
    attack = config.attack
    budget = poison_budget(attack, len(train))
    if attack.name not in ("brew", "all_to_all"):  # brew draws its class with the target image, and checks then
        pool = candidate_pool(train, attack.target, attack.source)
        if budget > pool.size:
            where = f"class {attack.source}" if attack.source is not None else f"the classes other than {attack.target}"
            key = "attack.count" if attack.count is not None else "attack.rate"
            raise ConfigError(f"{key} asks for {budget} poisons but {where} of the {len(train)}-image training set "
                              f"has only {pool.size}; lower {key}.")  # fmt: skip
    if config.victim.recipe.batch_size > len(train):
        raise ConfigError(f"victim.recipe.batch_size={config.victim.recipe.batch_size} is larger than the "
                          f"{len(train)}-image training set; lower it.")  # fmt: skip


def make_trigger(attack: AttackConfig, train_set: Dataset, clean: FunctionalModel, seed: int, progress: bool):
    """The trigger of a dirty-label attack on ``train_set`` (``clean`` is used by ``smooth`` only).

    The smooth trigger is Zeng et al.'s universal perturbation toward ``attack.target``, fitted
    against the clean model on the first 100 training images outside the target class. For a
    source-specific attack the source class is left out of the fit as well: the attack is
    measured on triggered source-class images, and a pattern fitted on that class would be an
    adversarial perturbation of it, so the unpoisoned model would already send up to the fit's
    fooling goal (20 %) of them to the target and PSR would not isolate the backdoor. The
    reference's pattern was not fitted on the source class either (it came from a CIFAR-10 model).
    """
    shape = train_set.image_shape
    if attack.name == "patched":
        epsilon = 2.0 if attack.epsilon is None else attack.epsilon
        if is_point_cloud(train_set):
            return point_patch(epsilon, seed=seed)
        patch = attack.patch
        return patched(shape, epsilon, size=patch.size, position=parse_position(patch.position), pattern=patch.pattern,
                       margin=patch.margin, seed=seed)  # fmt: skip
    if attack.name in ("badnet", "all_to_all"):
        if shape[0] < 16:  # 8×8 digits: the 4-pixel pattern is too small to learn; a 2×2 corner square
            return square_patch(shape, 2, (1.0,) * shape[-1], margin=0)
        # Grayscale datasets have black backgrounds that hide black pixels: use white ones.
        return badnet_pixels(shape, value=1.0 if shape[-1] == 1 else 0.0)
    if attack.name == "blended":
        return blended(shape, 0.1 if attack.epsilon is None else attack.epsilon, seed=seed)
    if attack.name == "smooth":
        fit = train_set.labels != attack.target
        if attack.source is not None:
            fit &= train_set.labels != attack.source
        pool = train_set.images[fit][:100]
        return make_smooth_trigger(clean, pool, attack.target, seed=seed, progress=progress)
    raise InputError(f"attack {attack.name!r} has no trigger.")


def poison_stage(
    store: RunStore, config: RunConfig, splits: Splits, clean: FunctionalModel, clean_key: str, progress: bool
) -> tuple[str, Poisoning]:
    """Build the poisoned training set (dirty-label trigger attacks or Witches' Brew)."""
    attack = config.attack
    attack_key = dataclasses.asdict(attack)
    if attack.name != "patched":  # the patch geometry touches only that attack: other runs keep their keys
        attack_key.pop("patch")
    inputs = {"attack": attack_key, "seed": config.seed, "train_hash": splits.train.content_hash,
              "clean": clean_key if attack.name in ("smooth", "brew") else None}  # fmt: skip
    if config.selection != "rs":  # RS is poison_dataset's own random draw: same key, same poisons
        inputs["selection"] = config.selection
    if config.ifs is not None:  # only when set: runs with IFS's defaults keep their keys
        inputs["ifs"] = dataclasses.asdict(config.ifs)
    train_set = splits.train

    def compute(directory: Path) -> dict:
        brew_target = None
        if attack.name == "brew":
            rng = np.random.default_rng(config.seed)
            brew_target = int(rng.integers(len(splits.test)))
            true_class = int(splits.test.labels[brew_target])
            intended = int(rng.choice([c for c in range(train_set.num_classes) if c != true_class]))
            pool = np.flatnonzero(train_set.labels == intended)
            budget = poison_budget(attack, len(train_set))
            if budget > pool.size:
                raise InputError(f"attack.rate asks for {budget} brew poisons but class {intended} has {pool.size}.")
            poisons = np.sort(rng.choice(pool, budget, replace=False))
            brew_config = dataclasses.replace(attack.brew, seed=config.seed)
            brew = brew_poisons(clean, train_set, poisons, splits.test.images[brew_target], intended, brew_config,
                                progress=progress)  # fmt: skip
            dataset, target, trigger = apply_brew(train_set, poisons, brew), intended, None
        else:
            trigger = make_trigger(attack, train_set, clean, config.seed, progress)
            how_many = {"rate": attack.rate} if attack.count is None else {"count": attack.count}
            if attack.name == "all_to_all":  # selection=rs only (config validation)
                poisoned = poison_all_to_all(train_set, trigger, seed=config.seed, **how_many)
            elif config.selection == "rs":
                poison_config = PoisonConfig(target=attack.target, source=attack.source, seed=config.seed,
                                             **how_many)  # fmt: skip
                poisoned = poison_dataset(train_set, trigger, poison_config)
            else:
                rate = poison_budget(attack, len(train_set)) / len(train_set)
                chosen = select_poisons(config.selection, train_set, trigger, attack.target, rate, config.ifs,
                                        seed=config.seed, progress=progress)  # fmt: skip
                poison_config = PoisonConfig(target=attack.target, indices=chosen.indices, seed=config.seed)
                poisoned = poison_dataset(train_set, trigger, poison_config)
            target = None if attack.name == "all_to_all" else attack.target
            dataset, poisons = poisoned.dataset, poisoned.poison_indices
            save_trigger(directory / "trigger", trigger)
        save_arrays(directory / "poisons.npz", compressed=True, indices=poisons, images=dataset.images[poisons],
                    labels=dataset.labels)  # fmt: skip
        described = None if trigger is None else trigger.describe()
        return {"poison_count": int(poisons.size), "target": target, "brew_target": brew_target,
                "selection": config.selection if trigger is not None else None,
                "poisoned_hash": dataset.content_hash, "trigger": described}  # fmt: skip

    key, record = store.run("poison", inputs, compute)
    directory = store.path("poison")
    with np.load(directory / "poisons.npz", allow_pickle=False) as saved:
        indices, images, labels = saved["indices"], saved["images"], saved["labels"]
    full = train_set.images.copy()
    full[indices] = images
    dataset = train_set.replace(images=full, labels=labels)
    if dataset.content_hash != record["poisoned_hash"]:
        raise InputError(f"{directory} does not rebuild the poisoned set it recorded; delete the stage and rerun.")
    trigger = load_trigger(directory / "trigger") if (directory / "trigger").exists() else None
    target = None if record["target"] is None else int(record["target"])
    return key, Poisoning(dataset, indices, trigger, target, record["brew_target"], attack.name == "all_to_all")


def poison_success(model: FunctionalModel, poisoning: Poisoning, config: RunConfig, test: Dataset) -> dict:
    """PSR: share of triggered victim-class test images sent to the target (brew: did the target image flip)."""
    if poisoning.trigger is None:
        image = test.subset([poisoning.brew_target])
        predicted = int(predict_logits(model, image).argmax(-1)[0])
        return {"psr": float(predicted == poisoning.target), "clean_accuracy": accuracy(model, test)}
    if poisoning.all_to_all:  # each triggered image of class y should go to (y + 1) mod C
        metrics = all_to_all_metrics(model, test, poisoning.trigger)
    else:
        metrics = attack_metrics(model, test, poisoning.trigger, poisoning.target, config.attack.source)
    return {"psr": metrics["asr"], "clean_accuracy": metrics["clean_accuracy"],
            "class_asr_variance": metrics["class_asr_variance"]}  # fmt: skip


def victim_stage(
    store: RunStore, config: RunConfig, splits: Splits, poisoning: Poisoning, poison_key: str, progress: bool
) -> tuple[str, FunctionalModel, dict]:
    """Train the victim on the poisoned set and measure the attack."""
    inputs = {"victim": dataclasses.asdict(config.victim), "seed": config.seed, "poison": poison_key}

    def compute(directory: Path) -> dict:
        model = fit_model(config.victim, poisoning.dataset, config.seed, progress)
        save_model(directory, model)
        return poison_success(model, poisoning, config, splits.test)

    key, record = store.run("victim", inputs, compute)
    model = load_model(store.path("victim"), init_model(config.victim, poisoning.dataset, config.seed))
    return key, model, record


def pick_test_points(
    model: FunctionalModel, poisoning: Poisoning, source: int | None, test: Dataset, count: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` triggered victim-class test images the victim assigns to the target.

    The first one is the reference's choice. Returns ``(test indices [k], images [k, H, W, C])``;
    for Witches' Brew, the brew's target image itself (``count`` must be 1). For the all-to-all
    attack, triggered images of the first class whose first triggered image the victim sends to
    its own target ``(y + 1) mod C``: all ``count`` points then share that one target (see
    :func:`test_point_target`).
    """
    if poisoning.trigger is None:
        if count != 1:
            raise InputError("Witches' Brew has a single target test image; ask for one test point.")
        return np.array([poisoning.brew_target]), test.images[poisoning.brew_target][None]
    if poisoning.all_to_all:
        victims = np.arange(len(test))
        wanted = all_to_all_targets(test.labels, test.num_classes)
    else:
        victims = np.flatnonzero(test.labels == source if source is not None else test.labels != poisoning.target)
        wanted = poisoning.target
    triggered = triggered_inputs(test, victims, poisoning.trigger)
    hits = test.subset(victims).replace(images=triggered)
    predicted = predict_logits(model, hits).argmax(-1)
    found = np.flatnonzero(predicted == wanted)
    if poisoning.all_to_all and found.size:  # several points must share one target: the first hit's class
        found = found[test.labels[victims[found]] == test.labels[victims[found[0]]]]
    if found.size == 0:
        raise InputError("no triggered test image is classified as the target: the backdoor did not take, so there "
                         "is no poisoned test point to start detection from.")  # fmt: skip
    if found.size < count:
        raise InputError(f"only {found.size} triggered test images are classified as the target; lower "
                         f"detection.test_points from {count} to at most {found.size}.")  # fmt: skip
    return victims[found[:count]], triggered[found[:count]]


def pick_points_per_target(
    model: FunctionalModel, poisoning: Poisoning, test: Dataset, count: int = 1
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For the all-to-all attack: ``{target: (test indices [count], images)}`` for every target class
    ``t`` that the victim sends ``count`` triggered test images of class ``(t − 1) mod C`` to.

    Each target of an all-to-all backdoor rests on its own poisons (those relabelled to it), so a
    defender who identifies one misbehaving test point per target can look for each group.
    Targets with fewer than ``count`` such images are left out.
    """
    if not poisoning.all_to_all:
        raise InputError("points per target are for the all-to-all attack; other attacks have one target.")
    triggered = triggered_inputs(test, np.arange(len(test)), poisoning.trigger)
    predicted = predict_logits(model, test.replace(images=triggered)).argmax(-1)
    hits = predicted == all_to_all_targets(test.labels, test.num_classes)
    points = {}
    for target in range(test.num_classes):
        found = np.flatnonzero(hits & (test.labels == (target - 1) % test.num_classes))[:count]
        if found.size == count:
            points[target] = (found, triggered[found])
    return points


def test_point_target(poisoning: Poisoning, test: Dataset, indices) -> int:
    """The class the identified poisoned test points were sent to: the attack's target, or for the
    all-to-all attack the first point's ``(y + 1) mod C`` (per-example target; all points share it)."""
    if not poisoning.all_to_all:
        return int(poisoning.target)
    return int(all_to_all_targets(test.labels[np.asarray(indices)[:1]], test.num_classes)[0])
