"""Training: recipes, the sharded train loop, evaluation and checkpoints."""

from jaxpoison.training.checkpoint import CheckpointError, checkpoint_manager, restore_latest, save
from jaxpoison.training.evaluate import (
    EvalResult,
    NonFiniteOutputError,
    evaluate,
    forward,
    iterate_padded,
    predict_labels,
    predict_logits,
)
from jaxpoison.training.recipes import RECIPES, TrainRecipe, adam_recipe, get_recipe, reference_recipe
from jaxpoison.training.train import DivergenceError, TrainResult, UnnormalisedInputWarning, train, train_step

__all__ = [
    "RECIPES",
    "CheckpointError",
    "DivergenceError",
    "EvalResult",
    "NonFiniteOutputError",
    "TrainRecipe",
    "TrainResult",
    "UnnormalisedInputWarning",
    "adam_recipe",
    "checkpoint_manager",
    "evaluate",
    "forward",
    "get_recipe",
    "iterate_padded",
    "predict_labels",
    "predict_logits",
    "reference_recipe",
    "restore_latest",
    "save",
    "train",
    "train_step",
]
