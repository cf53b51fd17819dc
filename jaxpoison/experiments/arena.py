"""``jaxpoison arena``: every attack and selection against every detector and unlearner, with a control.

The arena is a thin layer over the run pipeline's own stages
(:func:`~jaxpoison.experiments.pipeline.detect_stage`,
:func:`~jaxpoison.experiments.pipeline.unlearn_stage`,
:func:`~jaxpoison.experiments.control.control_stage`); it adds no computation of its own.

**Layout.** An :class:`ArenaSpec` names a base preset and the axes: attacks, selections,
detectors, unlearners and seeds. Each *group* (attack, selection, seed) is one run directory
``DIR/runs/ATTACK-SELECTION-seedS/`` whose :class:`~jaxpoison.experiments.store.RunStore`
holds the poisoned set, the victim, the test point and the EK-FAC factors once. Each *cell*
(attack, selection, detector, seed) is one :class:`~jaxpoison.experiments.config.RunConfig`,
the base with the cell's axes applied by
:func:`~jaxpoison.experiments.config.apply_overrides`; it runs its detector and every
unlearner on that detector's flags through the group's store, so cells of a group share
everything but their detector. The clean model depends only on the data, the victim recipe
and the seed (:func:`~jaxpoison.experiments.victim.clean_inputs`), never on the attack: it is
trained once per seed and its finished stage is linked into the seed's other groups, where the
store verifies its key and file hashes before reusing it. A **no-poison control** cell per
detector and seed runs :func:`~jaxpoison.experiments.control.control_stage` (the clean model,
a test image it gets wrong) in the seed's first group.

**Resuming.** A finished cell leaves ``DIR/cells/CELL.json`` keyed by a hash of its
configuration. A rerun skips every cell whose marker matches and opens a group's store only
when one of its cells has none; the store then reuses every stage whose inputs did not change.
Deleting one marker recomputes that cell's row only, from the stored stages.

A report travels where run stores do not: ``--resume-from OTHER/arena.json`` takes over that
report's finished cells whose keys match (:func:`import_cells`), so an arena can continue on
another machine from a committed report.

**Not applicable.** Selection methods choose which images get a trigger toward one target
class, so they do not apply to Witches' Brew (clean label: its poisons are perturbed
images of the class it aims at, drawn with its target test image), to the all-to-all attack
(one target per class) or to a source-specific base attack. Such (attack, selection) pairs are
listed with the reason and not run.

**All-to-all and the influence detectors.** Δ-Influence, the EK-FAC threshold and TRAK start,
as in Δ-Influence's paper, from an identified poisoned test point. An all-to-all backdoor has one
target per class, each resting on its own poisons, so for it these detectors run once per target
``t``, from a triggered test image of class ``(t − 1) mod C`` that the victim sends to ``t``
(:func:`~jaxpoison.experiments.victim.pick_points_per_target`); their flags are united and their
scores take the maximum (:func:`~jaxpoison.experiments.detectors.merge_detections`). Targets the
victim never reaches have no point and are not searched.

**Metrics** per cell: TPR, precision, F1, FPR and AuROC
(:func:`~jaxpoison.detection.metrics.detection_metrics`), PSR and clean accuracy before and
after each unlearner, DER (:func:`defence_effectiveness_rating`), seconds per stage; the
summary gives mean ± sample standard deviation over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxpoison.errors import InputError
from jaxpoison.experiments.config import ConfigError, RunConfig, apply_overrides, config_hash, to_dict
from jaxpoison.experiments.control import control_stage
from jaxpoison.experiments.pipeline import Prepared, _prepare_stages, detect_stage, unlearn_stage
from jaxpoison.experiments.presets import PRESETS, get_preset
from jaxpoison.experiments.registry import ATTACKS, DETECTOR_LABELS, DETECTORS, NEEDS_FACTORS, UNLEARNERS
from jaxpoison.experiments.stats import format_paired, paired_stats
from jaxpoison.experiments.store import STAGE_FILE, RunDirectoryError, RunStore
from jaxpoison.experiments.victim import Splits, clean_inputs, load_data, validate_against_data
from jaxpoison.fileio import atomic_write_text
from jaxpoison.progress import stage as named_stage
from jaxpoison.progress import stages as numbered_stages
from jaxpoison.selection.registry import SELECTION_NAMES

ARENA_VERSION = 1  # bump when a cell's record changes meaning: every marker is then recomputed
SPEC_FILE = "arena_spec.json"
# Keys the arena sets from its axes; a spec's overrides may not set them.
AXIS_KEYS = ("attack.name", "selection", "seed", "detection.methods", "unlearning.methods", "unlearning.detectors")
DEFAULT_DETECTORS = ("delta_influence", "ekfac", "trak", "spectral", "activation_clustering", "freqdef")


class ArenaError(ConfigError):
    """An arena specification or directory that cannot be used; the message says what to change."""


def _names(value: Any, key: str, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ArenaError(f"{key} must be a non-empty list; got {value!r}.")
    names = tuple(value)
    wrong = [v for v in names if not isinstance(v, str) or v not in allowed]
    if wrong:
        raise ArenaError(f"{key} has unknown entries {wrong}; choose from {tuple(allowed)}.")
    if len(set(names)) != len(names):
        raise ArenaError(f"{key} lists an entry twice: {list(names)}.")
    return names


def _overrides(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ArenaError(f"{key} must be a list of 'KEY=VALUE' strings; got {value!r}.")
    for item in value:
        name = item.split("=", 1)[0].strip()
        if "=" not in item:
            raise ArenaError(f"{key}: {item!r} is not KEY=VALUE.")
        if name in AXIS_KEYS:
            raise ArenaError(f"{key}: {name} is an axis of the arena; list it in the spec's axes instead.")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class ArenaSpec:
    """What an arena runs: a base preset and the axes crossed on it.

    Every field is checked on construction; a bad one raises :class:`ArenaError` naming the
    field and the choices.

    Attributes:
      base: the preset every cell starts from (see ``jaxpoison.experiments.PRESETS``).
      attacks: attack names (``badnet``, ``blended``, ``smooth``, ``brew``, ``all_to_all``, …).
      detectors: detector names (see ``jaxpoison.experiments.registry.DETECTORS``).
      unlearners: unlearner names, each run on every detector's flags.
      selections: poison selection methods (``rs``, ``ifs``, ``rd``, …).
      seeds: run seeds (non-negative, distinct).
      control: run the no-poison control row of every detector per seed.
      overrides: ``KEY=VALUE`` overrides applied to every cell (not the axis keys).
      attack_overrides: ``{attack: [KEY=VALUE, …]}`` applied to that attack's cells only
        (e.g. a smaller Witches' Brew budget).
    """

    base: str
    attacks: tuple[str, ...]
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    unlearners: tuple[str, ...] = ("eu", "cf")
    selections: tuple[str, ...] = ("rs",)
    seeds: tuple[int, ...] = (0,)
    control: bool = True
    overrides: tuple[str, ...] = ()
    attack_overrides: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.base, str) or self.base not in PRESETS:
            raise ArenaError(f"base must be a preset name, one of {', '.join(PRESETS)}; got {self.base!r}.")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # a frozen dataclass
        set_("attacks", _names(self.attacks, "attacks", ATTACKS))
        set_("detectors", _names(self.detectors, "detectors", DETECTORS))
        set_("unlearners", _names(self.unlearners, "unlearners", UNLEARNERS))
        set_("selections", _names(self.selections, "selections", SELECTION_NAMES))
        seeds = self.seeds if isinstance(self.seeds, list | tuple) else (self.seeds,)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ArenaError(f"seeds must be a non-empty list of integers ≥ 0; got {self.seeds!r}.")
        if len(set(seeds)) != len(seeds):
            raise ArenaError(f"seeds lists a seed twice: {list(seeds)}.")
        set_("seeds", tuple(seeds))
        if not isinstance(self.control, bool):
            raise ArenaError(f"control must be true or false; got {self.control!r}.")
        set_("overrides", _overrides(self.overrides, "overrides"))
        if not isinstance(self.attack_overrides, Mapping):
            raise ArenaError("attack_overrides must map attack names to lists of overrides; got "
                             f"{self.attack_overrides!r}.")
        stray = [a for a in self.attack_overrides if a not in self.attacks]
        if stray:
            raise ArenaError(f"attack_overrides names attacks {stray} that are not in attacks {list(self.attacks)}.")
        set_("attack_overrides", {a: _overrides(v, f"attack_overrides.{a}") for a, v in self.attack_overrides.items()})

    def to_dict(self) -> dict:
        """The spec as JSON-ready values (what :func:`spec_from_dict` reads back)."""
        values = dataclasses.asdict(self)
        return json.loads(json.dumps({**values, "attack_overrides": dict(self.attack_overrides)}))


def spec_from_dict(values: Mapping) -> ArenaSpec:
    """An :class:`ArenaSpec` from a JSON object; unknown keys are refused with the valid ones.

    Raises:
      ArenaError: not an object, an unknown or missing key, or a bad value.
    """
    if not isinstance(values, Mapping):
        raise ArenaError(f"an arena spec is a JSON object of fields; got a {type(values).__name__}.")
    fields = [f.name for f in dataclasses.fields(ArenaSpec)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ArenaError(f"unknown arena spec key(s) {unknown}; valid: {fields}.")
    missing = [k for k in ("base", "attacks") if k not in values]
    if missing:
        raise ArenaError(f"an arena spec needs {missing}; valid keys: {fields}.")
    return ArenaSpec(**values)


# jaxpoison arena arena-digits --out runs/arena-digits   (the test suite's slow arena; minutes on 2 CPU cores)
# The digits-badnet-tiny settings; all five attacks, RS/IFS/RD (where they apply), the six detectors,
# EU and CF, one seed, plus the no-poison control. Witches' Brew gets a small brew (8×8 images).
ARENA_DIGITS = ArenaSpec(
    base="digits-badnet-tiny",
    attacks=("badnet", "blended", "smooth", "brew", "all_to_all"),
    selections=("rs", "ifs", "rd"),
    detectors=DEFAULT_DETECTORS,
    unlearners=("eu", "cf"),
    seeds=(0,),
    attack_overrides={
        "brew": ("attack.brew.steps=30", "attack.brew.restarts=1", "detection.delta.n_tol=1"),
        "all_to_all": ("attack.rate=0.1",),
    },
)
# jaxpoison arena arena-fmnist --out runs/arena-fmnist   (≈5 hours on 2 idle CPU cores; resumable: rerun the
# same command after an interruption, and DIR/arena.md always holds what has finished). The fmnist-badnet recipe
# (CNN, Adam, 5 epochs; EU and the paper's CF) on the first 10,000 Fashion-MNIST training images, so that 18
# victims and 216 unlearning runs fit on a CPU: RS and IFS × BadNet, blended and smooth × the six detectors ×
# EU and CF × seeds 0-2, plus the no-poison control. 3 % poisons (285 of the 9,500 images left after the
# validation split), so the small set's victims learn every trigger; blended at ε = 0.2. Victim PSR on seed 0
# with RS: BadNet 0.971, blended 0.988 (ε = 0.1: 0.705), smooth 0.873. FreqDef trains on 5,000 clean images.
ARENA_FMNIST = ArenaSpec(
    base="fmnist-badnet",
    attacks=("badnet", "blended", "smooth"),
    selections=("rs", "ifs"),
    detectors=DEFAULT_DETECTORS,
    unlearners=("eu", "cf"),
    seeds=(0, 1, 2),
    overrides=("data.train_size=10000", "attack.rate=0.03", "detection.freqdef.max_train=5000"),
    attack_overrides={"blended": ("attack.epsilon=0.2",)},
)
ARENA_PRESETS: dict[str, ArenaSpec] = {"arena-digits": ARENA_DIGITS, "arena-fmnist": ARENA_FMNIST}


def load_spec(name: str | os.PathLike) -> ArenaSpec:
    """An arena preset by name, or the spec in a JSON file (:meth:`ArenaSpec.to_dict`'s fields).

    Raises:
      ArenaError: neither a preset nor a readable JSON spec.
    """
    if isinstance(name, str) and name in ARENA_PRESETS:
        return ARENA_PRESETS[name]
    path = Path(name)
    if not path.is_file():
        raise ArenaError(f"unknown arena {str(name)!r}: not a preset ({', '.join(ARENA_PRESETS)}) and no such "
                         "spec file.")  # fmt: skip
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArenaError(f"{path} is not a JSON arena spec ({e}).") from None
    try:
        return spec_from_dict(values)
    except ConfigError as e:
        raise ArenaError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- the plan


class Cell(NamedTuple):
    """One row of the arena: a detector (and every unlearner on its flags) on one group's victim.

    Attributes:
      name: file-safe name (``ATTACK__SELECTION__DETECTOR__seedS`` or ``control__DETECTOR__seedS``).
      kind: ``"poisoned"`` or ``"control"``.
      attack / selection: the group's axes (the host group's for a control cell).
      detector: the detector.
      seed: the run seed.
      group: the run directory's name under ``DIR/runs``.
      config: the cell's own configuration (its detector and its unlearners only).
      key: the hash its marker must carry to be reused.
    """

    name: str
    kind: str
    attack: str
    selection: str
    detector: str
    seed: int
    group: str
    config: RunConfig
    key: str


class Group(NamedTuple):
    """One run directory: an (attack, selection, seed) and every detector and unlearner of the spec."""

    name: str
    attack: str
    selection: str
    seed: int
    config: RunConfig
    cells: tuple[Cell, ...]


class ArenaPlan(NamedTuple):
    """Groups to run (each with its cells) and the (attack, selection) pairs that do not apply."""

    groups: tuple[Group, ...]
    not_applicable: tuple[dict, ...]

    @property
    def cells(self) -> tuple[Cell, ...]:
        """Every cell, in run order."""
        return tuple(c for g in self.groups for c in g.cells)


def not_applicable_reason(attack: str, selection: str, base: RunConfig) -> str | None:
    """Why ``selection`` cannot choose ``attack``'s poisons, or ``None`` when it can."""
    if selection == "rs":
        return None
    if attack == "brew":
        return ("Witches' Brew is clean-label: its poisons are images of the class it aims at, perturbed and drawn "
                "with its target test image, so there is no triggered sample to select")  # fmt: skip
    if attack == "all_to_all":
        return "selection scores candidates toward one target class; the all-to-all attack has one per class"
    if base.attack.source is not None:
        return f"the base attack is source-specific (class {base.attack.source}); selection is for all-to-one attacks"
    return None


def _cell_key(kind: str, config: RunConfig) -> str:
    return config_hash({"arena": ARENA_VERSION, "kind": kind, "config": to_dict(config)})


def plan_arena(spec: ArenaSpec) -> ArenaPlan:
    """Every group and cell of ``spec``, each configuration built and validated.

    Raises:
      ArenaError: an override that no configuration accepts, named with its cell.
    """
    base = get_preset(spec.base)
    groups, skipped = [], []
    for attack in spec.attacks:
        for selection in spec.selections:
            reason = not_applicable_reason(attack, selection, base)
            if reason is not None:
                skipped.append({"attack": attack, "selection": selection, "reason": reason})
    for seed in spec.seeds:
        hosts_control = spec.control
        for attack in spec.attacks:
            for selection in spec.selections:
                if not_applicable_reason(attack, selection, base) is not None:
                    continue
                name = f"{attack}-{selection}-seed{seed}"
                axes = [f"attack.name={attack}", f"selection={selection}", f"seed={seed}",
                        f"detection.methods={','.join(spec.detectors)}",
                        f"unlearning.methods={','.join(spec.unlearners)}",
                        f"unlearning.detectors={','.join(spec.detectors)}"]  # fmt: skip
                try:
                    config = apply_overrides(base, [*spec.overrides, *spec.attack_overrides.get(attack, ()), *axes])
                except ConfigError as e:
                    raise ArenaError(f"group {name}: {e}") from None
                cells = []
                for detector in spec.detectors:
                    own = apply_overrides(config, [f"detection.methods={detector}", f"unlearning.detectors={detector}"])
                    cells.append(Cell(f"{attack}__{selection}__{detector}__seed{seed}", "poisoned", attack, selection,
                                      detector, seed, name, own, _cell_key("poisoned", own)))  # fmt: skip
                if hosts_control:  # the seed's first group also hosts its no-poison control
                    hosts_control = False
                    for detector in spec.detectors:
                        own = apply_overrides(config, [f"detection.methods={detector}", "unlearning.methods=",
                                                       "unlearning.detectors=none"])  # fmt: skip
                        # the control depends on the clean model, not on this group's attack
                        cells.append(Cell(f"control__{detector}__seed{seed}", "control", attack, selection, detector,
                                          seed, name, own, _cell_key("control", own)))  # fmt: skip
                groups.append(Group(name, attack, selection, seed, config, tuple(cells)))
    if not groups:
        raise ArenaError("no (attack, selection) pair of the spec applies; add rs to selections.")
    return ArenaPlan(tuple(groups), tuple(skipped))


# --------------------------------------------------------------------------- metrics


def f1_score(precision: float | None, tpr: float | None) -> float | None:
    """Harmonic mean of precision and TPR (recall); ``None`` without a TPR (no poisons), 0 when both are 0."""
    if precision is None or tpr is None:
        return None
    return 0.0 if precision + tpr == 0 else 2 * precision * tpr / (precision + tpr)


def defence_effectiveness_rating(psr_before: float, psr_after: float, acc_before: float, acc_after: float) -> float:
    """BackdoorBench's defence effectiveness rating (DER), in [0, 1].

    ``DER = [max(0, ΔPSR) − max(0, ΔACC) + 1] / 2`` with ``ΔPSR = PSR_before − PSR_after`` and
    ``ΔACC = ACC_before − ACC_after`` (clean accuracy). 1 removes a fully working backdoor at no
    cost in accuracy; 0.5 changes nothing; below 0.5 the defence cost more accuracy than it removed
    backdoor. "Before" is the victim; "after" is the unlearned model.

    Example:
      >>> defence_effectiveness_rating(1.0, 0.0, 0.9, 0.9)
      1.0
    """
    return (max(0.0, psr_before - psr_after) - max(0.0, acc_before - acc_after) + 1.0) / 2.0


COLLAPSE_FRACTION = 0.5  # an unlearned model below this share of the victim's clean accuracy has collapsed


def effective_psr(row: Mapping, unlearner: str) -> float | None:
    """The PSR after ``unlearner`` in a cell's row, or ``None`` when it means nothing: the unlearner
    diverged, or the model collapsed (clean accuracy below ``COLLAPSE_FRACTION`` of the victim's,
    e.g. every image sent to one class, where PSR is 0 or 1 whatever the backdoor)."""
    result = row["unlearning"][unlearner]
    before, after = row.get("clean_accuracy_before"), result.get("clean_accuracy_after")
    if before is not None and after is not None and after < COLLAPSE_FRACTION * before:
        return None
    return result.get("psr_after")


def collapsed(row: Mapping, unlearner: str) -> bool:
    """The unlearner finished but its model collapsed (see :func:`effective_psr`)."""
    return row["unlearning"][unlearner].get("psr_after") is not None and effective_psr(row, unlearner) is None


def _stage_seconds(store: RunStore, name: str) -> float | None:
    marker = store.path(name) / STAGE_FILE
    if not marker.exists():
        return None
    return json.loads(marker.read_text())["record"].get("stage_seconds")


def _poisoned_row(prepared: Prepared, cell: Cell, progress: bool) -> dict:
    """Run (or reuse) the cell's detector and unlearners through the pipeline's stages; its row."""
    own = prepared._replace(config=cell.config)
    record, detection = detect_stage(own, cell.detector, progress=progress)
    metrics = {k: record[k] for k in ("tpr", "precision", "fpr", "auroc", "n_flagged", "n_true_positives",
                                      "n_poisons", "seconds")}  # fmt: skip
    metrics["f1"] = f1_score(record["precision"], record["tpr"])
    victim = prepared.victim_record
    seconds = {name: _stage_seconds(prepared.store, name) for name in ("clean", "poison", "victim", "test_point")}
    seconds["factors"] = _stage_seconds(prepared.store, "factors") if cell.detector in NEEDS_FACTORS else None
    seconds["detect"] = record.get("stage_seconds")
    unlearning = {}
    for method in cell.config.unlearning.methods:
        result = unlearn_stage(own, cell.detector, method, detection.flagged, progress=progress)
        diverged = result.get("diverged") is not None  # no model to measure: no PSR, accuracy or DER
        unlearning[method] = {
            "psr_after": result["psr"], "clean_accuracy_after": result["clean_accuracy"],
            "der": None if diverged else defence_effectiveness_rating(victim["psr"], result["psr"],
                                                                      victim["clean_accuracy"],
                                                                      result["clean_accuracy"]),
            "seconds": result.get("seconds"), "selection": result.get("selection"), "diverged": diverged,
        }  # fmt: skip
        seconds[f"unlearn:{method}"] = result.get("stage_seconds")
    return {
        "detection": metrics,
        "psr_before": victim["psr"],
        "clean_accuracy_before": victim["clean_accuracy"],
        "clean_model_accuracy": prepared.clean_record["clean_accuracy"],
        "test_point_target": prepared.victim.target,
        "unlearning": unlearning,
        "seconds": seconds,
        # a detector's cost: its own stage, plus the EK-FAC fit it needs (shared by the influence detectors)
        "cost_seconds": sum(v for k, v in seconds.items() if k in ("factors", "detect") and v is not None),
    }


def _control_row(prepared: Prepared, cell: Cell, progress: bool) -> dict:
    own = prepared._replace(config=cell.config)
    record = control_stage(own, (cell.detector,), progress=progress)[cell.detector]
    metrics = {k: record[k] for k in ("tpr", "precision", "fpr", "auroc", "n_flagged", "n_poisons", "seconds")}
    metrics["f1"] = None  # nothing to find: no TPR, no F1
    factors = _stage_seconds(prepared.store, "control:factors") if cell.detector in NEEDS_FACTORS else None
    detect = record.get("stage_seconds")
    return {"detection": metrics, "test_point": record.get("test_point"),
            "seconds": {"factors": factors, "detect": detect},
            "cost_seconds": sum(v for v in (factors, detect) if v is not None)}  # fmt: skip


# --------------------------------------------------------------------------- running


def _marker(root: Path, cell: Cell) -> Path:
    return root / "cells" / f"{cell.name}.json"


def _finished_row(root: Path, cell: Cell) -> dict | None:
    """The cell's row if its marker exists, is readable and carries the cell's current key."""
    path = _marker(root, cell)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == cell.key else None


def _link_tree(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` as hard links (a copy where linking is refused)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def share_clean_stage(root: Path, group: Group, splits: Splits) -> str | None:
    """Give ``group``'s run directory the finished clean model of another group with the same key.

    The clean stage's key (:func:`~jaxpoison.experiments.victim.clean_inputs`) holds the data, the
    victim recipe and the seed, not the attack, so every group of a seed shares one clean model.
    The link is only a head start: the group's store checks the key and every file's hash before
    reusing it, and retrains on any mismatch. Returns the group the stage came from, or ``None``.
    """
    key = config_hash(clean_inputs(group.config, splits))
    target = root / "runs" / group.name / "stages" / "clean"
    if (target / STAGE_FILE).exists():
        return None
    for marker in sorted((root / "runs").glob(f"*/stages/clean/{STAGE_FILE}")):
        try:
            if json.loads(marker.read_text()).get("key") != key:
                continue
        except (OSError, ValueError):
            continue
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_tree(marker.parent, target)
        return marker.parent.parent.parent.name
    return None


def import_cells(root: Path, plan: ArenaPlan, report: str | os.PathLike) -> list[str]:
    """Seed ``root``'s cell markers from another arena's ``arena.json``; return the cells imported.

    Run stores stay on the machine that ran them, but a report travels (e.g. committed next to
    the results), so a long arena can continue elsewhere from what a report already holds. A row
    is imported only if it finished (``status`` done), its key equals the planned cell's key (the
    same configuration) and the cell has no marker yet; the report must carry this
    :data:`ARENA_VERSION`. Imported rows say where they came from (``imported_from``).
    """
    path = Path(report)
    try:
        saved = json.loads(path.read_text())
    except OSError as e:
        raise ArenaError(f"cannot read --resume-from {path}: {e.strerror}; give an arena.json.") from None
    except ValueError:
        raise ArenaError(f"--resume-from {path} is not JSON; give an arena.json written by jaxpoison arena.") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("cells"), list):
        raise ArenaError(f"--resume-from {path} holds no arena cells; give an arena.json written by jaxpoison arena.")
    if saved.get("arena_version") != ARENA_VERSION:
        version = saved.get("arena_version")
        raise ArenaError(f"--resume-from {path} has arena_version {version!r}, this jaxpoison writes "
                         f"{ARENA_VERSION}: its rows mean something else; rerun those cells instead.")  # fmt: skip
    planned = {c.name: c for c in plan.cells}
    imported = []
    for row in saved["cells"]:
        cell = planned.get(row.get("cell")) if isinstance(row, dict) else None
        if cell is None or row.get("key") != cell.key or row.get("status") != "done":
            continue
        if _finished_row(root, cell) is not None:
            continue
        atomic_write_text(_marker(root, cell), json.dumps({**row, "imported_from": str(path)}, indent=2))
        imported.append(cell.name)
    return imported


def _check_directory(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ArenaError(f"--out {root} is a file; give a directory.")
    if root.exists() and any(root.iterdir()) and not (root / SPEC_FILE).exists():
        raise ArenaError(f"{root} is not empty and holds no arena ({SPEC_FILE}); choose a new or empty --out.")


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[arena] {text}", file=sys.stderr, flush=True)


def _run_group(root: Path, group: Group, pending: Sequence[Cell], splits: Splits, computed: list[str],
               reused: list[str], total: int, progress: bool) -> list:  # fmt: skip
    """Open one group's run store, prepare its shared stages and write each pending cell's marker."""
    shared = share_clean_stage(root, group, splits)
    if shared:
        _say(progress, f"{group.name}: clean model linked from {shared}")
    with RunStore(root / "runs" / group.name, to_dict(group.config), force=True) as store:
        try:
            prepared = _prepare_stages(group.config, store, splits, progress)
        except RunDirectoryError:
            raise
        except InputError as e:  # e.g. no triggered test image reaches the target
            prepared, failure = None, str(e)
            _say(progress, f"{group.name}: failed ({failure})")
        for cell in pending:
            _say(progress, f"cell {len(computed) + len(reused) + 1}/{total}: {cell.name}")
            if prepared is None:
                row = {"status": "failed", "reason": failure}
            elif cell.kind == "control":
                row = {"status": "done", **_control_row(prepared, cell, progress)}
            else:
                row = {"status": "done", **_poisoned_row(prepared, cell, progress)}
            row = {"key": cell.key, "cell": cell.name, "kind": cell.kind, "attack": cell.attack,
                   "selection": cell.selection, "detector": cell.detector, "seed": cell.seed,
                   "run_dir": f"runs/{group.name}", **row}  # fmt: skip
            atomic_write_text(_marker(root, cell), json.dumps(row, indent=2, default=float))
            computed.append(cell.name)
        return list(store.events)


def run_arena(spec: ArenaSpec, out: str | Path, *, progress: bool = True,
              resume_from: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Run (or resume) every cell of ``spec`` into ``out``; write ``arena.json``, ``arena.md`` and plots.

    Everything checkable is checked before any training: the spec, every cell's configuration,
    and each group's attack against its data. A group whose attack cannot produce a poisoned test
    point (e.g. the backdoor did not take) marks its cells ``failed`` with the reason.

    Args:
      resume_from: another arena's ``arena.json``; its finished cells whose keys match are
        taken over (:func:`import_cells`) instead of recomputed.

    Returns:
      The report written to ``out/arena.json``, plus ``"this_run"``: the cells computed by this
      call (``computed``), those reused from their markers (``reused``, imported ones included),
      those imported from ``resume_from`` (``imported``) and each opened group's store events
      (``stages``).
    """
    start = time.perf_counter()
    root = Path(out)
    _check_directory(root)
    plan = plan_arena(spec)
    data_cache: dict[str, Splits] = {}

    def splits_of(config: RunConfig) -> Splits:
        key = config_hash([to_dict(config.data), config.seed])
        if key not in data_cache:
            data_cache[key] = load_data(config.data, config.seed)
        return data_cache[key]

    for group in plan.groups:  # before any work: the data decides whether each attack can be built
        try:
            validate_against_data(group.config, splits_of(group.config))
        except ConfigError as e:
            raise ArenaError(f"group {group.name}: {e}") from None
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / SPEC_FILE, json.dumps(spec.to_dict(), indent=2))
    (root / "cells").mkdir(exist_ok=True)
    imported = import_cells(root, plan, resume_from) if resume_from is not None else []
    if imported:
        _say(progress, f"{len(imported)} cells imported from {resume_from}")
    computed, reused, stages = [], [], {}
    total = len(plan.cells)
    todo = []
    for group in plan.groups:
        pending = [c for c in group.cells if _finished_row(root, c) is None]
        reused += [c.name for c in group.cells if c not in pending]
        if pending:
            todo.append((group, pending))
    report = None
    with numbered_stages(len(todo)):  # every bar reads "[3/18] blended-rs-seed0 · victim · epoch 1/5"
        for group, pending in todo:
            with named_stage(group.name):
                stages[group.name] = _run_group(root, group, pending, splits_of(group.config), computed, reused,
                                                total, progress)  # fmt: skip
            # a report after every group: an interrupted arena's results are readable at once
            rows = [_finished_row(root, c) for c in plan.cells]
            report = write_arena_report(root, spec, plan, rows, time.perf_counter() - start)
    if report is None:  # nothing was pending: the report from the stored cells
        rows = [_finished_row(root, c) for c in plan.cells]
        report = write_arena_report(root, spec, plan, rows, time.perf_counter() - start)
    return {**report, "this_run": {"computed": computed, "reused": reused, "imported": imported, "stages": stages}}


# --------------------------------------------------------------------------- summary and report


def _stat(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n"}`` of the values that exist (std: sample standard deviation, ``None`` for n < 2)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return {"mean": float(np.mean(present)), "std": std, "n": len(present)}


def summarize(rows: Sequence[dict]) -> dict:
    """Mean ± std over seeds: ``detection`` per (attack, selection, detector), ``unlearning`` per
    (attack, selection, detector, unlearner), ``control`` per detector. Failed cells are left out."""
    done = [r for r in rows if r and r.get("status") == "done"]
    detection, control = {}, {}
    for r in done:
        if r["kind"] == "control":
            control.setdefault(r["detector"], []).append(r)
        else:
            detection.setdefault((r["attack"], r["selection"], r["detector"]), []).append(r)
    metrics = ("tpr", "precision", "f1", "fpr", "auroc", "n_flagged")
    out = {"detection": [], "unlearning": [], "control": []}
    for (attack, selection, detector), group in detection.items():
        entry = {"attack": attack, "selection": selection, "detector": detector,
                 "seeds": [r["seed"] for r in group]}  # fmt: skip
        entry.update({m: _stat([r["detection"][m] for r in group]) for m in metrics})
        entry["cost_seconds"] = _stat([r["cost_seconds"] for r in group])
        entry["psr_before"] = _stat([r["psr_before"] for r in group])
        entry["clean_accuracy_before"] = _stat([r["clean_accuracy_before"] for r in group])
        entry["clean_model_accuracy"] = _stat([r["clean_model_accuracy"] for r in group])
        out["detection"].append(entry)
        for method in group[0]["unlearning"]:
            results = [r["unlearning"][method] for r in group]
            unlearning_entry = {"attack": attack, "selection": selection, "detector": detector, "unlearner": method,
                                "psr_before": entry["psr_before"],
                                "clean_accuracy_before": entry["clean_accuracy_before"]}  # fmt: skip
            for key in ("clean_accuracy_after", "der", "seconds"):
                unlearning_entry[key] = _stat([u[key] for u in results])
            # PSR over the seeds whose model still works; collapsed models are counted, not averaged
            unlearning_entry["psr_after"] = _stat([effective_psr(r, method) for r in group])
            unlearning_entry["collapsed"] = sum(collapsed(r, method) for r in group)
            out["unlearning"].append(unlearning_entry)
    for detector, group in control.items():
        entry = {"detector": detector, "seeds": [r["seed"] for r in group]}
        entry.update({m: _stat([r["detection"][m] for r in group]) for m in ("n_flagged", "fpr", "tpr")})
        entry["cost_seconds"] = _stat([r["cost_seconds"] for r in group])
        out["control"].append(entry)
    return out


PAIRED_METRICS = ("f1", "tpr", "auroc")


def paired_comparisons(rows: Sequence[dict | None], *, baseline_selection: str = "rs",
                       reference_detector: str = "delta_influence", confidence: float = 0.95) -> dict:  # fmt: skip
    """The two comparisons the arena is for, as paired differences with t-intervals.

    ``selection``: each selection minus ``baseline_selection`` per (attack, detector), paired by
    seed, in F1, TPR and AuROC and in PSR after each unlearner: does a selection evade a
    detector (negative detection differences) or its unlearning (positive PSR differences)?
    ``detector``: ``reference_detector`` minus each other detector per attack, paired over
    (selection, seed). Pairs whose value is missing on either side (a diverged unlearner, a
    detector with no AuROC) are left out; see :func:`~jaxpoison.experiments.stats.paired_stats`.
    """
    done = {(r["attack"], r["selection"], r["detector"], r["seed"]): r for r in rows
            if r and r.get("status") == "done" and r["kind"] == "poisoned"}  # fmt: skip

    def paired(pairs: list[tuple[float | None, float | None]]) -> dict:
        return paired_stats([a - b for a, b in pairs if a is not None and b is not None], confidence)

    selection, detector = [], []
    for attack, chosen, det in dict.fromkeys((a, c, d) for a, c, d, _ in sorted(done)):
        if chosen == baseline_selection:
            continue
        seeds = sorted(s for (a, c, d, s) in done if (a, c, d) == (attack, chosen, det)
                       and (attack, baseline_selection, det, s) in done)  # fmt: skip
        if not seeds:
            continue
        ours = [done[attack, chosen, det, s] for s in seeds]
        base = [done[attack, baseline_selection, det, s] for s in seeds]
        entry = {"attack": attack, "selection": chosen, "baseline": baseline_selection, "detector": det, "seeds": seeds}
        entry.update({m: paired([(o["detection"][m], b["detection"][m]) for o, b in zip(ours, base, strict=True)])
                      for m in PAIRED_METRICS})  # fmt: skip
        entry["psr_after"] = {u: paired([(effective_psr(o, u), effective_psr(b, u) if u in b["unlearning"] else None)
                                         for o, b in zip(ours, base, strict=True)])
                              for u in ours[0]["unlearning"]}  # fmt: skip
        selection.append(entry)
    for attack in dict.fromkeys(a for a, _, _, _ in done):
        others = dict.fromkeys(d for a, _, d, _ in done if a == attack and d != reference_detector)
        for det in others:
            keys = sorted((c, s) for (a, c, d, s) in done if (a, d) == (attack, det)
                          and (attack, c, reference_detector, s) in done)  # fmt: skip
            if not keys:
                continue
            ref = [done[attack, c, reference_detector, s] for c, s in keys]
            other = [done[attack, c, det, s] for c, s in keys]
            entry = {"attack": attack, "detector": reference_detector, "versus": det,
                     "pairs": [list(k) for k in keys]}  # fmt: skip
            entry.update({m: paired([(r["detection"][m], o["detection"][m]) for r, o in zip(ref, other, strict=True)])
                          for m in (*PAIRED_METRICS, "precision")})  # fmt: skip
            detector.append(entry)
    return {"confidence": confidence, "selection": selection, "detector": detector}


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std']:.{digits}f}"


def arena_markdown(spec: ArenaSpec, summary: dict, rows: Sequence[dict | None], not_applicable: Sequence[dict],
                   plots: Mapping[str, str], seconds: float, pending: Sequence[str] = ()) -> str:  # fmt: skip
    """The arena's tables as Markdown: detection, unlearning, control, not applicable, failed cells."""
    label = DETECTOR_LABELS.get
    lines = [f"# jaxpoison arena: {spec.base}", "",
             f"- attacks {', '.join(spec.attacks)}; selections {', '.join(spec.selections)}; "
             f"detectors {', '.join(spec.detectors)}; unlearners {', '.join(spec.unlearners)}; "
             f"seeds {', '.join(map(str, spec.seeds))}",
             f"- {sum(1 for r in rows if r)} of {len(rows)} cells finished"
             + (f" (partial: {len(pending)} pending; rerun the same command to finish)" if pending else "")
             + "; values are mean ± sample std over seeds (one seed: the value)",
             f"- wall time of this call {seconds:.0f} s", "", "## Detection", "",
             "| attack | selection | detector | F1 | TPR | precision | FPR | AuROC | #flagged | PSR before | cost s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for e in summary["detection"]:
        lines.append(f"| {e['attack']} | {e['selection']} | {label(e['detector'], e['detector'])} | {_fmt(e['f1'])} | "
                     f"{_fmt(e['tpr'])} | {_fmt(e['precision'])} | {_fmt(e['fpr'])} | {_fmt(e['auroc'])} | "
                     f"{_fmt(e['n_flagged'], 0)} | {_fmt(e['psr_before'])} | "
                     f"{_fmt(e['cost_seconds'], 1)} |")  # fmt: skip
    lines += ["", "## Unlearning", "",
              "DER = [max(0, PSR before − PSR after) − max(0, ACC before − ACC after) + 1] / 2 (BackdoorBench). "
              f"A model whose clean accuracy fell below {COLLAPSE_FRACTION:g} × the victim's has collapsed: it is "
              "counted under \"collapsed\" and left out of \"PSR after\" (its PSR is 0 or 1 whatever the backdoor); "
              "clean accuracy and DER include it.", "",
              "| attack | selection | detector | unlearner | PSR before | PSR after | collapsed | clean acc. after "
              "| DER | s |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for e in summary["unlearning"]:
        lines.append(f"| {e['attack']} | {e['selection']} | {label(e['detector'], e['detector'])} | {e['unlearner']} | "
                     f"{_fmt(e['psr_before'])} | {_fmt(e['psr_after'])} | {e.get('collapsed', 0)} | "
                     f"{_fmt(e['clean_accuracy_after'], 4)} | {_fmt(e['der'])} | "
                     f"{_fmt(e['seconds'], 1)} |")  # fmt: skip
    if summary["control"]:
        lines += ["", "## No-poison control", "",
                  "The clean model, from a test image it gets wrong: every flag is a false positive (no TPR).", "",
                  "| detector | #flagged | FPR | TPR | cost s |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for e in summary["control"]:
            lines.append(f"| {label(e['detector'], e['detector'])} | {_fmt(e['n_flagged'], 0)} | {_fmt(e['fpr'])} | "
                         f"{_fmt(e['tpr'])} | {_fmt(e['cost_seconds'], 1)} |")  # fmt: skip
    paired = summary.get("paired") or {}
    if paired.get("selection"):
        lines += ["", f"## Selections against {paired['selection'][0]['baseline']}, paired by seed", "",
                  "Selection minus the baseline on the same seed: mean [95 % t-interval] (seeds ahead / seeds). "
                  "Negative detection differences mean the selection evades the detector.", "",
                  "| attack | selection | detector | F1 | TPR | AuROC | PSR after (per unlearner) |",
                  "|---|---|---|---:|---:|---:|---|"]  # fmt: skip
        for e in paired["selection"]:
            psr = "; ".join(f"{u} {format_paired(v)}" for u, v in e["psr_after"].items())
            lines.append(f"| {e['attack']} | {e['selection']} | {label(e['detector'], e['detector'])} | "
                         f"{format_paired(e['f1'])} | {format_paired(e['tpr'])} | {format_paired(e['auroc'])} | "
                         f"{psr} |")  # fmt: skip
    if paired.get("detector"):
        ref = label(paired["detector"][0]["detector"], paired["detector"][0]["detector"])
        lines += ["", f"## {ref} against each detector, paired over selections and seeds", "",
                  f"{ref} minus the other detector on the same victim: mean [95 % t-interval] (pairs ahead / pairs).",
                  "", "| attack | versus | F1 | precision | TPR | AuROC |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for e in paired["detector"]:
            lines.append(f"| {e['attack']} | {label(e['versus'], e['versus'])} | {format_paired(e['f1'])} | "
                         f"{format_paired(e['precision'])} | {format_paired(e['tpr'])} | "
                         f"{format_paired(e['auroc'])} |")  # fmt: skip
    if not_applicable:
        lines += ["", "## Not applicable", ""]
        lines += [f"- {n['attack']} × {n['selection']}: {n['reason']}." for n in not_applicable]
    failed = [r for r in rows if r and r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- {r['cell']}: {r['reason']}" for r in failed]
    if pending:
        lines += ["", "## Pending cells", "", *[f"- {name}" for name in pending]]
    if plots:
        lines += ["", "## Plots", "", *[f"- {k}: `{v}`" for k, v in plots.items()]]
    return "\n".join(lines) + "\n"


def arena_plots(
    summary: dict, rows: Sequence[dict], directory: str | Path, not_applicable: Sequence[dict] = ()
) -> dict[str, Path]:
    """The F1 heatmap (detector × attack/selection; pairs in ``not_applicable`` read "n/a"), the
    PSR-after heatmap (unlearner × detector, mean over attacks, selections and seeds) and the
    detectors' cost-vs-F1 scatter. Returns ``{name: path}``."""
    from jaxpoison.experiments.plots import plot_cost_vs_score, plot_heatmap

    directory = Path(directory)
    plots = {}
    detection = summary["detection"]
    if not detection:
        return plots
    detectors = list(dict.fromkeys(e["detector"] for e in detection))
    pairs = [(e["attack"], e["selection"]) for e in detection] + [(n["attack"], n["selection"]) for n in not_applicable]
    columns = sorted(dict.fromkeys(pairs), key=pairs.index)
    f1 = np.full((len(detectors), len(columns)), np.nan)
    for e in detection:
        if e["f1"]["mean"] is not None:
            f1[detectors.index(e["detector"]), columns.index((e["attack"], e["selection"]))] = e["f1"]["mean"]
    labels = [DETECTOR_LABELS.get(d, d) for d in detectors]
    plots["f1_heatmap"] = plot_heatmap(f1, labels, [f"{a}\n{s}" for a, s in columns], directory / "f1_heatmap.png",
                                       title="Detection F1 (mean over seeds)", vmin=0.0, vmax=1.0)  # fmt: skip
    done = [r for r in rows if r and r.get("status") == "done" and r["kind"] == "poisoned"]
    unlearners = list(dict.fromkeys(u for r in done for u in r["unlearning"]))
    if unlearners:
        psr = np.full((len(unlearners), len(detectors)), np.nan)
        for i, u in enumerate(unlearners):
            for j, d in enumerate(detectors):
                values = [effective_psr(r, u) for r in done if r["detector"] == d and u in r["unlearning"]]
                values = [v for v in values if v is not None]  # a diverged or collapsed model has no PSR
                if values:
                    psr[i, j] = float(np.mean(values))
        plots["psr_after_heatmap"] = plot_heatmap(
            psr, unlearners, labels, directory / "psr_after_heatmap.png", vmin=0.0, vmax=1.0, cmap="Reds",
            title="PSR after unlearning (mean over attacks, selections, seeds)",
        )  # fmt: skip
    points = {}
    for d, name in zip(detectors, labels, strict=True):
        cells = [r for r in done if r["detector"] == d and r["detection"]["f1"] is not None]
        if cells:
            cost = [r["cost_seconds"] for r in cells]
            f1s = [r["detection"]["f1"] for r in cells]
            points[name] = (float(np.mean(cost)), float(np.mean(f1s)), float(np.std(cost)), float(np.std(f1s)))
    if points:
        plots["cost_vs_f1"] = plot_cost_vs_score(points, directory / "cost_vs_f1.png", ylabel="F1", ylim=(-0.02, 1.02),
                                                 title="Detectors: cost vs F1 (mean ± std over cells)")  # fmt: skip
    return plots


def write_arena_report(root: Path, spec: ArenaSpec, plan: ArenaPlan, rows: Sequence[dict | None],
                       seconds: float) -> dict:  # fmt: skip
    """Write ``arena.json``, ``arena.md`` and ``plots/`` in ``root`` from the cells' rows; return the report.

    Cells without a row (``None``: not run yet) are listed as ``pending``, so the report of an
    unfinished arena says what it holds and what it lacks; :func:`run_arena` writes one after
    every group.
    """
    pending = [c.name for c, r in zip(plan.cells, rows, strict=True) if r is None]
    summary = summarize(rows)
    summary["paired"] = paired_comparisons(rows)
    drawn = arena_plots(summary, rows, root / "plots", plan.not_applicable)
    plots = {k: str(Path(v).relative_to(root)) for k, v in drawn.items()}
    report = {"spec": spec.to_dict(), "arena_version": ARENA_VERSION, "wall_seconds": seconds,
              "cells": [r for r in rows if r], "pending": pending, "not_applicable": list(plan.not_applicable),
              "summary": summary, "plots": plots}  # fmt: skip
    atomic_write_text(root / "arena.json", json.dumps(report, indent=2, default=float))
    markdown = arena_markdown(spec, summary, rows, plan.not_applicable, plots, seconds, pending)
    atomic_write_text(root / "arena.md", markdown)
    return report
