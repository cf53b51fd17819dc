"""Poison detection: Δ-Influence and the baselines it is compared with.

* :mod:`~jaxpoison.detection.transforms` — keyed, vmappable image transformations and label flips;
* :mod:`~jaxpoison.detection.delta_influence` — the influence-collapse detector;
* :mod:`~jaxpoison.detection.threshold` — EK-FAC and TRAK score thresholds;
* :mod:`~jaxpoison.detection.spectral`, :mod:`~jaxpoison.detection.activation_clustering` —
  feature-space baselines on :func:`penultimate_features`;
* :mod:`~jaxpoison.detection.freqdef` — the frequency-domain detector;
* :mod:`~jaxpoison.detection.metrics` — TPR, precision, AuROC, ROC curves.
"""

from jaxpoison.detection.activation_clustering import ClusterResult, activation_clustering
from jaxpoison.detection.delta_influence import (
    DeltaConfig,
    DeltaResult,
    Queries,
    delta_influence,
    make_queries,
    suspicion,
    vote,
)
from jaxpoison.detection.features import penultimate_features
from jaxpoison.detection.freqdef import (
    FreqDefConfig,
    FreqDetector,
    dct2,
    freqdef_detect,
    freqdef_scores,
    synthetic_triggers,
    train_freqdef,
)
from jaxpoison.detection.metrics import auroc, detection_metrics, mask_from_indices, roc_curve
from jaxpoison.detection.spectral import SpectralResult, spectral_signatures, spectral_signatures_reference
from jaxpoison.detection.threshold import (
    REFERENCE_EKFAC_THRESHOLD,
    ThresholdResult,
    ekfac_threshold,
    robust_threshold,
    threshold_flags,
    trak_threshold,
)
from jaxpoison.detection.transforms import (
    TRANSFORM_NAMES,
    TransformParams,
    apply_transform,
    flip_labels,
    transform_batch,
)

__all__ = [
    "REFERENCE_EKFAC_THRESHOLD",
    "TRANSFORM_NAMES",
    "ClusterResult",
    "DeltaConfig",
    "DeltaResult",
    "FreqDefConfig",
    "FreqDetector",
    "Queries",
    "SpectralResult",
    "ThresholdResult",
    "TransformParams",
    "activation_clustering",
    "apply_transform",
    "auroc",
    "dct2",
    "delta_influence",
    "detection_metrics",
    "ekfac_threshold",
    "flip_labels",
    "freqdef_detect",
    "freqdef_scores",
    "make_queries",
    "mask_from_indices",
    "penultimate_features",
    "robust_threshold",
    "roc_curve",
    "spectral_signatures",
    "spectral_signatures_reference",
    "suspicion",
    "synthetic_triggers",
    "threshold_flags",
    "train_freqdef",
    "trak_threshold",
    "transform_batch",
    "vote",
]
