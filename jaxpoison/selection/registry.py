"""One entry point for every selection method, by name.

The CLI (``jaxpoison select``), the run pipeline (``--set selection=ifs``) and
``benchmarks/ifs.py`` all pick a method by name; they share this dispatcher so the
methods are called the same way everywhere.
"""

from __future__ import annotations

from jaxpoison.data import Dataset
from jaxpoison.data.pointcloud import is_point_cloud
from jaxpoison.selection.common import Selection, SelectionError
from jaxpoison.selection.forgetting import FUSConfig, fus_selection
from jaxpoison.selection.frequency import HFEConfig, hfe_selection
from jaxpoison.selection.ifs import IFSConfig, ifs_selection
from jaxpoison.selection.random import random_selection
from jaxpoison.selection.representation import RDConfig, rd_selection

SELECTORS = ("rs", "fus", "rd", "hfe", "ifs")
# Named settings of a method, callable by name like a method (the IFS sweep reports each as a row).
VARIANTS = {"hfe_asc": ("hfe", HFEConfig(order="ascending"))}
SELECTION_NAMES = (*SELECTORS, *VARIANTS)
# The default proxy of FUS, RD and IFS on point clouds: a small model, as the CNN is on images.
POINT_CLOUD_MODEL = "pointnet_small"
_CONFIGS = {"fus": FUSConfig, "rd": RDConfig, "hfe": HFEConfig, "ifs": IFSConfig}


def default_config(method: str, *, point_clouds: bool = False) -> FUSConfig | RDConfig | HFEConfig | IFSConfig:
    """The settings ``method`` runs with when given none: its config's defaults, with a
    ``POINT_CLOUD_MODEL`` proxy instead of the image CNN for FUS, RD and IFS on point clouds."""
    if method not in _CONFIGS:
        raise SelectionError(f"{method} takes no config; methods with one: {', '.join(_CONFIGS)}.")
    if point_clouds and method in ("fus", "rd", "ifs"):
        return _CONFIGS[method](model=POINT_CLOUD_MODEL)
    return _CONFIGS[method]()


def select_poisons(
    method: str,
    dataset: Dataset,
    trigger,
    target: int,
    rate: float,
    config: FUSConfig | RDConfig | HFEConfig | IFSConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> Selection:
    """Run selection ``method`` (one of :data:`SELECTION_NAMES`) with its ``config`` (``None``: defaults).

    RS takes no config and ignores the trigger; HFE is deterministic (``seed`` unused). A
    variant name of :data:`VARIANTS` (``hfe_asc``) runs its method with the variant's config
    and takes no other. On point clouds (:func:`jaxpoison.data.pointcloud.is_point_cloud`) the
    default configs of FUS, RD and IFS train a ``"pointnet_small"`` proxy instead of the image CNN, and
    HFE refuses (a frequency-domain image method).
    """
    if method in VARIANTS:
        if config is not None:
            raise SelectionError(f"{method} is a fixed setting of {VARIANTS[method][0]}; pass no config.")
        method, config = VARIANTS[method]
    if method not in SELECTORS:
        raise SelectionError(f"unknown selection method {method!r}; choose one of {', '.join(SELECTION_NAMES)}.")
    if config is not None and not isinstance(config, _CONFIGS.get(method, ())):
        expected = _CONFIGS[method].__name__ if method in _CONFIGS else "no config"
        raise SelectionError(f"{method} takes {expected}; got {type(config).__name__}.")
    if config is None and method in ("fus", "rd", "ifs") and is_point_cloud(dataset):
        config = default_config(method, point_clouds=True)
    if method == "rs":
        return random_selection(dataset, target, rate, seed=seed)
    if method == "hfe":
        return hfe_selection(dataset, trigger, target, rate, config)
    run = {"fus": fus_selection, "rd": rd_selection, "ifs": ifs_selection}[method]
    return run(dataset, trigger, target, rate, config, seed=seed, progress=progress)
