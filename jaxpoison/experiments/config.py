"""Typed run configurations: what data, which attack, which victim, how to detect and unlearn.

A :class:`RunConfig` is a tree of frozen dataclasses whose branches are the library's own
configs — ``victim.recipe`` is a :class:`~jaxpoison.training.TrainRecipe`,
``detection.scores`` a :class:`~jaxpoison.influence.ScoreConfig`, ``unlearning.scrub`` a
:class:`~jaxpoison.unlearning.ScrubConfig` — so a setting means the same in a run as in a
direct call, and each library config checks its own values. The tree round-trips through
JSON (:func:`to_dict` / :func:`from_dict`) and takes command-line overrides as dotted keys
(``--set attack.rate=0.02 victim.recipe.epochs=3``) via :func:`apply_overrides`; unknown
keys and values of the wrong type are refused with the list of valid keys, and a key of the
older flat layout (``victim.epochs``) with the key it moved to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from jaxpoison.attacks import BrewConfig
from jaxpoison.data import get_spec
from jaxpoison.detection.delta_influence import DeltaConfig
from jaxpoison.detection.freqdef import FreqDefConfig
from jaxpoison.errors import InputError
from jaxpoison.experiments.registry import ATTACKS, DETECTORS, UNLEARNERS
from jaxpoison.influence import FactorConfig, ScoreConfig, TrakConfig
from jaxpoison.selection import IFSConfig
from jaxpoison.selection.registry import SELECTION_NAMES, default_config
from jaxpoison.training import TrainRecipe
from jaxpoison.unlearning import BadTeacherConfig, ScrubConfig, SSDConfig

UNLEARNING_SELECTION = ("clean", "oracle")


class ConfigError(InputError):
    """A configuration key or value that cannot be used; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Attributes:
    name: a dataset of :func:`jaxpoison.data.load_splits` (``digits``, ``fashion_mnist``, …).
    train_size / test_size: keep only the first ``n`` examples (``None``: all) — for quick runs.
    validation_fraction: share of the poisoned training set held out for model selection
      in unlearning (never the test set).
    image_size: resize images to ``image_size × image_size`` (``imagenet10``, ``imagenette``,
      ``raf_db``; ``None``: the loader's default).
    points: points sampled per cloud (``shapes3d``, ``modelnet40``; ``None``: the loader's default).
    """

    name: str = "fashion_mnist"
    train_size: int | None = None
    test_size: int | None = None
    validation_fraction: float = 0.05
    image_size: int | None = None
    points: int | None = None

    def loader_options(self) -> dict:
        """The options given to :func:`jaxpoison.data.load_splits` (only those that are set)."""
        return {k: getattr(self, k) for k in DATA_OPTIONS if getattr(self, k) is not None}


DATA_OPTIONS = ("image_size", "points")  # DataConfig fields that are loader options


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Geometry of the ``patched`` attack (see :func:`jaxpoison.attacks.patched`); its strength is
    ``attack.epsilon``. Point clouds ignore it (their cluster is set by ε alone).

    Attributes:
      size: patch side in pixels (``None``: 3 per 32 pixels of the image side).
      position: ``bottom-right``, ``bottom-left``, ``top-right``, ``top-left``, ``center`` or ``"ROW,COL"``.
      pattern: ``checkerboard``, ``solid`` or ``random`` (the sign of each pixel's change).
      margin: distance from the edges for a corner position.
    """

    size: int | None = None
    position: str = "bottom-right"
    pattern: str = "checkerboard"
    margin: int = 1

    def __post_init__(self):
        from jaxpoison.attacks import PATCH_PATTERNS, parse_position

        if self.size is not None and self.size < 1:
            raise ConfigError(f"attack.patch.size must be at least 1 pixel (or None); got {self.size}.")
        if self.margin < 0:
            raise ConfigError(f"attack.patch.margin must be ≥ 0; got {self.margin}.")
        if self.pattern not in PATCH_PATTERNS:
            raise ConfigError(f"attack.patch.pattern must be one of {PATCH_PATTERNS}; got {self.pattern!r}.")
        try:
            parse_position(self.position)
        except InputError as e:
            raise ConfigError(f"attack.patch.position: {e}") from None


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Attributes:
    name: ``badnet`` (4-pixel pattern; white on grayscale, black on colour), ``blended``,
      ``patched`` (a patch added at amplitude ε on the 0–255 scale, the IFS paper's patched attack;
      on point clouds a cluster of points whose size ε sets), ``smooth`` (low-frequency trigger
      fitted against the clean model), ``brew`` (Witches' Brew, clean label, one target test image) or
      ``all_to_all`` (BadNet's trigger, each poison relabelled from y to (y + 1) mod C; see
      :mod:`jaxpoison.attacks.all_to_all`).
    target: the attack's target class (unused by ``all_to_all``, whose targets follow the labels).
    source: victim class (``None``: all-to-one).
    rate: poisons as a fraction of the training set (after the validation split).
    count: the exact number of poisons (``None``: ``rate`` decides). The paper presets state
      counts, so that holding out a validation split never shrinks the attack.
    epsilon: blend ratio of ``blended`` in (0, 1] (``None``: 0.1), or the strength of ``patched``
      in (0, 255] on the 0–255 scale (``None``: 2, the IFS paper's low-visibility setting).
    patch: the ``patched`` attack's geometry (:class:`PatchConfig`). Written to JSON only for
      ``patched`` or when changed, so the configurations (and run keys) of other attacks are as before.
    brew: Witches' Brew's :class:`~jaxpoison.attacks.BrewConfig` (ℓ∞ budget, steps, restarts,
      …); its ``seed`` follows the run's.
    """

    name: str = "badnet"
    target: int = 0
    source: int | None = None
    rate: float = 0.01
    count: int | None = None
    epsilon: float | None = None
    patch: PatchConfig = PatchConfig()
    brew: BrewConfig = BrewConfig(steps=100, restarts=2)


@dataclasses.dataclass(frozen=True)
class VictimConfig:
    """Attributes:
    model: a name of the model registry (:func:`jaxpoison.models.create_model`).
    recipe: how it is trained (:class:`~jaxpoison.training.TrainRecipe`): optimiser, schedule,
      batch size, and augmentation by random crop, horizontal and vertical flips.
    """

    model: str = "cnn"
    recipe: TrainRecipe = TrainRecipe(epochs=5)


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Attributes:
    methods: detectors to run (see ``DETECTORS``).
    test_points: identified poisoned test points to start from (the first ones the victim
      assigns to the target). With more than one, Δ-Influence and the EK-FAC/TRAK thresholds
      keep only points flagged from every test point (the paper's Tables 4–5); the paper's
      headline setting is one.
    delta: Δ-Influence settings (:class:`~jaxpoison.detection.DeltaConfig`).
    factors: the EK-FAC fit (:class:`~jaxpoison.influence.FactorConfig`): ``fisher`` is
      ``"true"`` (sampled labels, kronfluence's default) or ``"empirical"``.
    scores: how influence is scored (:class:`~jaxpoison.influence.ScoreConfig`): measurement,
      damping (the library's one ``DEFAULT_DAMPING``; ``None``: 0.1 × mean eigenvalue) and
      batch size.
    ekfac_threshold: score cut of the EK-FAC baseline (``None``: robust median + 5·MAD).
    trak: the TRAK baseline (:class:`~jaxpoison.influence.TrakConfig`).
    freqdef: the FreqDef detector's budget (:class:`~jaxpoison.detection.freqdef.FreqDefConfig`).

    The ``seed`` of ``delta``, ``factors``, ``trak`` and ``freqdef`` follows the run's.
    """

    methods: tuple[str, ...] = ("delta_influence", "ekfac", "spectral", "activation_clustering")
    test_points: int = 1
    delta: DeltaConfig = DeltaConfig()
    factors: FactorConfig = FactorConfig()
    scores: ScoreConfig = ScoreConfig(batch_size=256)
    ekfac_threshold: float | None = None
    trak: TrakConfig = TrakConfig(projection_dim=256, batch_size=256)
    freqdef: FreqDefConfig = FreqDefConfig(width=16, epochs=3, max_train=10_000)


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """Attributes:
    methods: unlearners to run (see ``UNLEARNERS``); each runs on every detector's flags.
      ``cf`` is the paper's CF (continue training the victim as it is); ``cf_reset`` is a
      jaxpoison variant that re-initialises the victim's output layer first.
    detectors: which detectors' flags to unlearn (``None``: all that ran).
    cf: the recipe of ``cf``, ``cf_reset`` and ``cf_short`` (``None``: the victim's). The
      reference's CF restarts its SGD schedule at lr 0.1, and that large step is what makes the
      network forget; Adam victims keep their backdoor under a restarted Adam (digits: PSR 0.27;
      SGD at 0.05: 0.00) and, on Fashion-MNIST, under SGD at 0.05 (PSR 0.24; SGD at 0.1: 0.02),
      so the CNN presets continue with SGD at the reference's 0.1. With a 5-epoch budget the
      full Fashion-MNIST BadNet victim keeps PSR 0.09 under ``cf`` from the 8 poisons
      Δ-Influence misses (0.03 when every poison is removed); under ``cf_reset``, 0.019 at clean
      accuracy 0.9087 (unpoisoned 0.9166).
    cf_short_epochs: epochs of the short fine-tune variant of CF (with CF's recipe).
    ssd: the SSD grid (:class:`~jaxpoison.unlearning.SSDConfig`; λ = factor · α).
    scrub / badt: SCRUB's and bad-teacher distillation's settings
      (:class:`~jaxpoison.unlearning.ScrubConfig`, :class:`~jaxpoison.unlearning.BadTeacherConfig`).
    scrub_budget / badt_budget: the share of the victim's training budget SCRUB and BadT get, as
      minibatch steps: ``ceil(budget · victim epochs · ceil(training set / distillation batch))``;
      it replaces ``distill.steps``. The Δ-Influence paper gives approximate unlearners 10 %
      (4 epochs for a 40-epoch victim). ``None``: ``distill.steps`` as set (the reference's code
      ran 40).
    selection: how SSD, SCRUB and BadT choose among their candidates (grid points, checkpoints).
      ``"clean"``: clean validation accuracy and how much of the flagged points' labels the model
      still reproduces (:func:`jaxpoison.unlearning.clean_rule`) — no knowledge of the attack, as
      the paper's defender. ``"oracle"``: PSR on triggered validation images (the reference's rule,
      :func:`jaxpoison.unlearning.oracle_rule`); it uses the trigger, and reports mark it.
    selection_tolerance: the clean rule's accuracy floor, below the victim's validation accuracy.
    max_psr: a run "succeeds" when the poison success rate is at most this.
    """

    methods: tuple[str, ...] = ("eu", "cf")
    detectors: tuple[str, ...] | None = ("delta_influence",)
    cf: TrainRecipe | None = None
    cf_short_epochs: int = 1
    ssd: SSDConfig = SSDConfig()
    scrub: ScrubConfig = ScrubConfig()
    scrub_budget: float | None = 0.1
    badt: BadTeacherConfig = BadTeacherConfig()
    badt_budget: float | None = 0.1
    selection: str = "clean"
    selection_tolerance: float = 0.02
    max_psr: float = 0.05

    def __post_init__(self):
        if self.selection not in UNLEARNING_SELECTION:
            raise ConfigError(f"unlearning.selection must be 'clean' (no knowledge of the attack) or 'oracle' "
                              f"(chooses with the trigger); got {self.selection!r}.")  # fmt: skip
        if self.selection_tolerance < 0:
            raise ConfigError(f"unlearning.selection_tolerance must be ≥ 0; got {self.selection_tolerance}.")
        for key in ("scrub", "badt"):
            budget = getattr(self, f"{key}_budget")
            if budget is not None and budget <= 0:
                raise ConfigError(f"unlearning.{key}_budget must be a positive share of training (or None for "
                                  f"unlearning.{key}.distill.steps); got {budget}.")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One poison → train → detect → unlearn → evaluate run."""

    data: DataConfig = DataConfig()
    attack: AttackConfig = AttackConfig()
    victim: VictimConfig = VictimConfig()
    detection: DetectionConfig = DetectionConfig()
    unlearning: UnlearnConfig = UnlearnConfig()
    seed: int = 0
    # which training samples get the trigger: "rs" (uniform at random) or a selection method
    # of jaxpoison.selection ("fus", "rd", "hfe", "ifs"), e.g. `--set selection=ifs`
    selection: str = "rs"
    # IFS's settings under selection=ifs (None: IFSConfig's defaults, with a pointnet_small surrogate on
    # point clouds), e.g. `--set ifs.surrogate_epochs=3 --set ifs.model=mlp`
    ifs: IFSConfig | None = None

    def __post_init__(self):
        validate(self)


def validate(config: RunConfig) -> None:
    """Refuse values no stage could use, naming the key to change."""
    _check_finite(config)
    if config.attack.name not in ATTACKS:
        raise ConfigError(f"attack.name must be one of {ATTACKS}; got {config.attack.name!r}.")
    for key, values, allowed in (("detection.methods", config.detection.methods, DETECTORS),
                                 ("unlearning.methods", config.unlearning.methods, UNLEARNERS)):  # fmt: skip
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"{key} has unknown entries {unknown}; choose from {allowed}.")
    if config.unlearning.detectors is not None:
        missing = [d for d in config.unlearning.detectors if d not in config.detection.methods]
        if missing:
            raise ConfigError(f"unlearning.detectors {missing} are not in detection.methods; add them or drop them.")
    if not 0 < config.attack.rate < 1:
        raise ConfigError(f"attack.rate must lie in (0, 1); got {config.attack.rate}.")
    if config.attack.count is not None and config.attack.count < 1:
        raise ConfigError(f"attack.count must be at least 1 (or None to use attack.rate); got {config.attack.count}.")
    if not 0 <= config.data.validation_fraction < 0.5:
        raise ConfigError(f"data.validation_fraction must lie in [0, 0.5); got {config.data.validation_fraction}.")
    _check_loader_options(config.data)
    if config.selection not in SELECTION_NAMES:
        raise ConfigError(f"selection must be one of {SELECTION_NAMES}; got {config.selection!r}.")
    if config.ifs is not None and config.selection != "ifs":
        raise ConfigError(f"ifs.* settings are read by selection=ifs only (selection is {config.selection!r}); "
                          "set selection=ifs or drop them.")  # fmt: skip
    if config.selection != "rs" and (config.attack.name == "brew" or config.attack.source is not None):
        raise ConfigError("selection methods choose poisons for all-to-one trigger attacks; use selection=rs with "
                          "Witches' Brew or a source-specific attack.")  # fmt: skip
    if config.attack.name == "all_to_all" and (config.selection != "rs" or config.attack.source is not None):
        raise ConfigError("the all-to-all attack poisons every class toward the next one: it takes selection=rs "
                          "and attack.source=None (selection methods score candidates toward one target class).")
    if config.detection.test_points < 1:
        raise ConfigError(f"detection.test_points must be at least 1; got {config.detection.test_points}.")
    if config.attack.name == "brew" and config.attack.epsilon is not None:
        raise ConfigError("attack.epsilon is the blend ratio of 'blended' (or the strength of 'patched'); Witches' "
                          "Brew's ℓ∞ budget is attack.brew.epsilon.")  # fmt: skip
    if config.attack.name == "brew" and config.detection.test_points != 1:
        raise ConfigError("Witches' Brew poisons one target test image: set detection.test_points=1.")
    if not isinstance(config.detection.scores.measurement, str):
        raise ConfigError("detection.scores.measurement must be a measurement's name in a run configuration (it is "
                          "written to JSON); call the library directly to score with a function.")  # fmt: skip
    for key in _RUN_SEEDED:
        if _get(config, key) != 0:
            raise ConfigError(f"{key} follows the run's seed; set `seed` instead (got {key}={_get(config, key)}).")
    for key, ok, want in _ranges(config):
        if not ok:
            raise ConfigError(f"{key} must be {want}; got {_get(config, key)!r}.")


def _check_loader_options(data: DataConfig) -> None:
    """``data.image_size`` / ``data.points``: integers ≥ 1, and only for datasets whose loader takes them."""
    for key, value in data.loader_options().items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key} must be an integer ≥ 1 (or None for the loader's default); got {value!r}.")
        try:
            takes = get_spec(data.name).options
        except InputError:
            return  # an unknown dataset name is reported when the data is loaded, with the known names
        if key not in takes:
            offered = f"it takes {', '.join(takes)}" if takes else "it takes none"
            raise ConfigError(f"data.{key} is not an option of dataset {data.name!r} ({offered}); drop it.")


# Seeds of nested library configs that the run sets from its own `seed`.
_RUN_SEEDED = ("attack.brew.seed", "detection.delta.seed", "detection.factors.seed", "detection.trak.seed",
               "detection.freqdef.seed")  # fmt: skip

# Keys of the older flat layout, and where each now lives (for the error that refuses them).
_FLAT_VICTIM = ("optimizer", "learning_rate", "epochs", "batch_size", "weight_decay", "milestones", "crop_padding")
_FLAT_VICTIM += ("flip", "vflip")
_FLAT_CF = ("optimizer", "learning_rate", "weight_decay", "epochs")
MOVED_KEYS = {
    **{f"victim.{k}": f"victim.recipe.{k}" for k in _FLAT_VICTIM},
    "attack.brew_steps": "attack.brew.steps",
    "attack.brew_restarts": "attack.brew.restarts",
    "detection.fisher": "detection.factors.fisher",
    "detection.factor_batch_size": "detection.factors.batch_size",
    "detection.score_batch_size": "detection.scores.batch_size (and detection.trak.batch_size)",
    "detection.damping": "detection.scores.damping",
    "detection.trak_projection_dim": "detection.trak.projection_dim",
    "detection.freqdef_epochs": "detection.freqdef.epochs",
    "detection.freqdef_train_size": "detection.freqdef.max_train",
    "detection.freqdef_width": "detection.freqdef.width",
    **{f"unlearning.cf_{k}": f"unlearning.cf.{k} (a whole TrainRecipe; None: the victim's)" for k in _FLAT_CF},
    "unlearning.cf_reset_head": "unlearning.methods (add 'cf_reset')",
    "unlearning.ssd_alphas": "unlearning.ssd.alphas",
    "unlearning.ssd_lambda_factors": "unlearning.ssd.lambda_factors",
    "unlearning.scrub_steps": "unlearning.scrub.distill.steps (with unlearning.scrub_budget=None)",
    "unlearning.scrub_max_steps": "unlearning.scrub.max_steps",
    "unlearning.scrub_lr": "unlearning.scrub.distill.learning_rate",
    "unlearning.scrub_alpha": "unlearning.scrub.alpha",
    "unlearning.scrub_temperature": "unlearning.scrub.temperature",
    "unlearning.badt_steps": "unlearning.badt.distill.steps (with unlearning.badt_budget=None)",
    "unlearning.badt_lr": "unlearning.badt.distill.learning_rate",
}


def _moved(keys: list[str]) -> str:
    """`` (X moved to Y; …)`` for those of ``keys`` that the older flat layout had; else ``""``."""
    moved = [f"{k} moved to {MOVED_KEYS[k]}" for k in keys if k in MOVED_KEYS]
    return f" ({'; '.join(moved)})" if moved else ""


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every float anywhere in the tree is finite: NaN compares false and would slip past every range check."""
    for field in dataclasses.fields(node):
        value, key = getattr(node, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.")
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key} must be a finite number; got {value!r}.")


def _ranges(c: RunConfig) -> list[tuple[str, bool, str]]:
    """``(key, holds, what it must be)`` for every bounded field the library configs do not check themselves."""
    a, d, u = c.attack, c.detection, c.unlearning

    def optional(value, test):
        return value is None or test(value)

    return [
        ("seed", c.seed >= 0, "a non-negative integer"),
        ("data.train_size", optional(c.data.train_size, lambda n: n >= 1), "at least 1 (or None for all)"),
        ("data.test_size", optional(c.data.test_size, lambda n: n >= 1), "at least 1 (or None for all)"),
        ("attack.target", a.target >= 0, "a class index ≥ 0"),
        (
            "attack.source",
            optional(a.source, lambda s: s >= 0 and s != a.target),
            "a class index ≥ 0 other than attack.target (or None for all classes)",
        ),
        (
            "attack.epsilon",
            optional(a.epsilon, lambda e: 0 < e <= (255 if a.name == "patched" else 1)),
            "in (0, 255] on the 0-255 scale for patched (e.g. 2)" if a.name == "patched"
            else "in (0, 1] (or None for the attack's default)",
        ),
        (
            "detection.factors.strategy",
            d.factors.strategy == "ekfac",
            "'ekfac' (Δ-Influence and the EK-FAC baseline score with eigen-corrected factors)",
        ),
        ("unlearning.cf_short_epochs", u.cf_short_epochs >= 1, "at least 1"),
        ("unlearning.max_psr", 0 <= u.max_psr <= 1, "in [0, 1]"),
    ]


def validate_classes(config: RunConfig, num_classes: int) -> None:
    """The attack's classes exist in the dataset — checked once the data is known, before any stage runs."""
    for key in ("attack.target", "attack.source"):
        value = _get(config, key)
        if value is not None and value >= num_classes:
            raise ConfigError(f"{key}={value} is not a class of {config.data.name} "
                              f"({num_classes} classes: 0–{num_classes - 1}).")  # fmt: skip


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(config: Any) -> dict:
    """A JSON-ready dict (tuples become lists).

    A run's ``attack.patch`` section is left out unless the attack is ``patched`` or the section
    was changed, and ``data.image_size``, ``data.points`` and the ``ifs`` section unless they are
    set: they do not touch other runs, whose configurations (and run hashes) stay as they were
    before these fields existed. :func:`from_dict` fills them in again.
    """
    tree = json.loads(json.dumps(dataclasses.asdict(config)))
    if isinstance(config, RunConfig) and config.attack.name != "patched" and config.attack.patch == PatchConfig():
        del tree["attack"]["patch"]
    if isinstance(config, RunConfig):  # likewise the loader options and IFS's settings, when unset
        for key in DATA_OPTIONS:
            if tree["data"][key] is None:
                del tree["data"][key]
        if tree["ifs"] is None:
            del tree["ifs"]
    return tree


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a JSON/CLI value into the annotated type, or raise naming the key."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in typing.get_args(hint):
                return None
        for option in options:
            if isinstance(value, dict) and dataclasses.is_dataclass(option):  # a section: its own error says what
                return _coerce(value, option, key)
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {hint}.")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; set its fields as {key}.FIELD=VALUE.")
        return from_dict(hint, value, prefix=key)
    if hint is dict or origin is dict:  # e.g. ifs.model_kwargs='{"hidden": [16]}'
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{key} takes a JSON object, e.g. '{{\"hidden\": [16]}}'; got {value!r}.") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key} takes a JSON object; got {value!r}.")
        return dict(value)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} takes a comma-separated list; got {value!r}.")
        return tuple(_coerce(v, item, key) for v in value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {hint.__name__}.") from None
    raise ConfigError(f"{key}: unsupported type {hint}.")


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict; unknown keys are refused."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        where = f"{prefix}." if prefix else ""
        keys = sorted(where + u for u in unknown)
        raise ConfigError(f"unknown key(s) {keys}{_moved(keys)}; valid: {sorted(fields)}.")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    try:
        return cls(**kwargs)  # missing fields (and sections) take their defaults
    except ConfigError:
        raise
    except ValueError as error:  # a library config's own check (an InputError) names the field, not the section
        raise ConfigError(f"{prefix or cls.__name__}: {error}") from None


# Sections that may be None; overriding one of their fields starts from this value.
# (The tree is the configuration with the overrides applied so far: IFS's default follows data.name.)
_OPTIONAL_SECTIONS = {"cf": lambda config, tree: config.victim.recipe,
                      "ifs": lambda config, tree: default_ifs_config(str(tree["data"]["name"]))}  # fmt: skip


def default_ifs_config(dataset: str) -> IFSConfig:
    """IFS's defaults for ``dataset`` (see :func:`jaxpoison.selection.registry.default_config`)."""
    try:
        points = len(get_spec(dataset).image_shape) == 2  # a point cloud's (points, 3)
    except InputError:  # an unknown name is reported when the data is loaded
        points = False
    return default_config("ifs", point_clouds=points)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` overrides with dotted keys, e.g. ``detection.delta.n_tol=2``."""
    tree = json.loads(json.dumps(dataclasses.asdict(config)))  # every field, also those to_dict leaves out
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE; got {item!r}.")
        key, value = item.split("=", 1)
        node, parts = tree, key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None and part in _OPTIONAL_SECTIONS:  # e.g. unlearning.cf: start from the default
                node[part] = to_dict(_OPTIONAL_SECTIONS[part](config, tree))
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown section {part!r} in {key!r}{_moved([key.strip()])}; "
                                  f"sections: {sorted(k for k in node)}.")  # fmt: skip
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown key {key!r}{_moved([key.strip()])}; valid keys here: {sorted(node)}.")
        if isinstance(node[parts[-1]], dict):  # a section, or a free-form mapping such as ifs.model_kwargs
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; set its fields as {key}.FIELD=VALUE (or give a JSON "
                                  "object).")  # fmt: skip
        node[parts[-1]] = value
    return from_dict(RunConfig, tree)


_RUN_FILE_KEYS = {"config", "config_hash"}  # what RunStore writes to DIR/run.json


def load_config(path: str | os.PathLike) -> RunConfig:
    """The :class:`RunConfig` in a JSON file: a run's ``run.json`` (or its directory), or a config file.

    A config file holds the tree :func:`to_dict` writes (``jaxpoison run PRESET --dump-config FILE``);
    sections and fields it leaves out take their defaults. ``run.json`` wraps that tree as
    ``{"config": ..., "config_hash": ...}``. Anything else is refused with a message that says
    what the file should hold.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "run.json").is_file():
            raise ConfigError(f"{path} is a directory without run.json; give a run directory, its run.json or a "
                              "config file.")  # fmt: skip
        path = path / "run.json"
    if not path.is_file():
        raise ConfigError(f"no config file {path}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a jaxpoison config: not a text file.") from None
    try:
        values = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path} is not a jaxpoison config: not valid JSON ({e}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} is not a jaxpoison config: it holds a JSON {type(values).__name__}, "
                          "not an object of config sections.")  # fmt: skip
    if isinstance(values.get("config"), dict) and set(values) <= _RUN_FILE_KEYS:
        values = values["config"]
    if not values:
        raise ConfigError(f"{path} is not a jaxpoison config: it sets nothing.")
    try:
        return from_dict(RunConfig, values)
    except ConfigError as e:
        raise ConfigError(f"{path} is not a valid jaxpoison config: {e}") from None


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (stage keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
