"""The one list of each kind a run can name: attacks, detectors and unlearners.

Configuration checks, CLI choices, presets, stage keys and report labels all derive from
these tables, so a method is added in one place. They hold names and facts only (what a
detector needs, which settings an unlearner reads); the code that runs each method lives
in :mod:`jaxpoison.experiments.detectors` and :mod:`jaxpoison.experiments.pipeline`.
"""

from __future__ import annotations

from typing import NamedTuple


class DetectorSpec(NamedTuple):
    """A detector a run can name.

    Attributes:
      label: its name in reports and plots.
      needs_factors: it reads the victim's EK-FAC factors (its stage key includes theirs).
      influence_based: its result depends on the influence numerics (``NUMERICS_VERSION``).
      in_all: part of the ``all`` presets (the reference variant of spectral signatures is not).
    """

    label: str
    needs_factors: bool = False
    influence_based: bool = False
    in_all: bool = True


class UnlearnerSpec(NamedTuple):
    """An unlearner a run can name.

    Attributes:
      settings: the ``UnlearnConfig`` fields it reads, its stage key (none for exact
        unlearning, which retrains with the victim's own recipe).
      selecting: it chooses among candidates on held-out data (``unlearning.selection``).
    """

    settings: tuple[str, ...] = ()
    selecting: bool = False


ATTACKS = ("badnet", "blended", "patched", "smooth", "brew", "all_to_all")

DETECTOR_SPECS: dict[str, DetectorSpec] = {
    "delta_influence": DetectorSpec("Δ-Influence", needs_factors=True, influence_based=True),
    "delta_label_only": DetectorSpec("Δ-Influence (labels only)", needs_factors=True, influence_based=True),
    "delta_image_only": DetectorSpec("Δ-Influence (images only)", needs_factors=True, influence_based=True),
    "ekfac": DetectorSpec("EK-FAC threshold", needs_factors=True, influence_based=True),
    "trak": DetectorSpec("TRAK threshold", influence_based=True),
    "spectral": DetectorSpec("Spectral signatures"),
    "spectral_reference": DetectorSpec("Spectral signatures (reference variant)", in_all=False),
    "activation_clustering": DetectorSpec("Activation clustering"),
    "freqdef": DetectorSpec("FreqDef"),
}

UNLEARNER_SPECS: dict[str, UnlearnerSpec] = {
    "eu": UnlearnerSpec(),
    "cf": UnlearnerSpec(("cf",)),
    "cf_reset": UnlearnerSpec(("cf",)),
    "cf_short": UnlearnerSpec(("cf", "cf_short_epochs")),
    "ssd": UnlearnerSpec(("ssd",), selecting=True),
    "scrub": UnlearnerSpec(("scrub", "scrub_budget"), selecting=True),
    "badt": UnlearnerSpec(("badt", "badt_budget"), selecting=True),
}

DETECTORS = tuple(DETECTOR_SPECS)
UNLEARNERS = tuple(UNLEARNER_SPECS)
ALL_DETECTORS = tuple(name for name, spec in DETECTOR_SPECS.items() if spec.in_all)
NEEDS_FACTORS = tuple(name for name, spec in DETECTOR_SPECS.items() if spec.needs_factors)
INFLUENCE_BASED = tuple(name for name, spec in DETECTOR_SPECS.items() if spec.influence_based)
DETECTOR_LABELS = {name: spec.label for name, spec in DETECTOR_SPECS.items()}
