"""Poisoning attacks: triggers, the poisoned-dataset builder, and attack metrics."""

from jaxpoison.attacks.metrics import attack_metrics
from jaxpoison.attacks.poison import (
    PoisonConfig,
    PoisonedDataset,
    PoisonError,
    candidate_pool,
    choose_poisons,
    poison_dataset,
)
from jaxpoison.attacks.triggers import (
    BlendedTrigger,
    PatchTrigger,
    TriggerError,
    badnet_pixels,
    blended,
    default_blend_pattern,
    resize_pattern,
    square_patch,
)

__all__ = [
    "BlendedTrigger",
    "PatchTrigger",
    "PoisonConfig",
    "PoisonError",
    "PoisonedDataset",
    "TriggerError",
    "attack_metrics",
    "badnet_pixels",
    "blended",
    "candidate_pool",
    "choose_poisons",
    "default_blend_pattern",
    "poison_dataset",
    "resize_pattern",
    "square_patch",
]
