"""Training: recipes, the sharded train loop, evaluation and checkpoints."""

from jaxpoison.training.checkpoint import CheckpointError, checkpoint_manager, restore_latest, save
from jaxpoison.training.evaluate import EvalResult, NonFiniteOutputError, evaluate, iterate_padded, predict_logits
from jaxpoison.training.recipes import RECIPES, TrainRecipe, adam_recipe, get_recipe, reference_recipe
from jaxpoison.training.train import DivergenceError, TrainResult, make_train_step, train

__all__ = [
    "RECIPES",
    "CheckpointError",
    "DivergenceError",
    "EvalResult",
    "NonFiniteOutputError",
    "TrainRecipe",
    "TrainResult",
    "adam_recipe",
    "checkpoint_manager",
    "evaluate",
    "get_recipe",
    "iterate_padded",
    "make_train_step",
    "predict_logits",
    "reference_recipe",
    "restore_latest",
    "save",
    "train",
]
