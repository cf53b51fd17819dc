"""Poisoning attacks: triggers, the poisoned-dataset builder, and attack metrics."""

from jaxpoison.attacks.io import load_trigger, save_trigger
from jaxpoison.attacks.metrics import attack_metrics
from jaxpoison.attacks.poison import (
    PoisonConfig,
    PoisonedDataset,
    PoisonError,
    candidate_pool,
    choose_poisons,
    poison_dataset,
)
from jaxpoison.attacks.smooth import SmoothTrigger, lowpass, make_smooth_trigger, minmax
from jaxpoison.attacks.triggers import (
    BlendedTrigger,
    PatchTrigger,
    Trigger,
    TriggerError,
    badnet_pixels,
    blended,
    default_blend_pattern,
    resize_pattern,
    square_patch,
)
from jaxpoison.attacks.witches_brew import Brew, BrewConfig, apply_brew, brew_poisons

__all__ = [
    "BlendedTrigger",
    "Brew",
    "BrewConfig",
    "PatchTrigger",
    "PoisonConfig",
    "PoisonError",
    "PoisonedDataset",
    "SmoothTrigger",
    "Trigger",
    "TriggerError",
    "apply_brew",
    "attack_metrics",
    "badnet_pixels",
    "blended",
    "brew_poisons",
    "candidate_pool",
    "choose_poisons",
    "default_blend_pattern",
    "load_trigger",
    "lowpass",
    "make_smooth_trigger",
    "minmax",
    "poison_dataset",
    "resize_pattern",
    "save_trigger",
    "square_patch",
]
