"""Train a model on a named dataset and write its metrics: the ``jaxpoison train`` job."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from jaxpoison.data import load_splits
from jaxpoison.errors import InputError
from jaxpoison.fileio import atomic_write_text
from jaxpoison.models import count_params, create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.sharding import data_mesh
from jaxpoison.training import TrainRecipe, evaluate, get_recipe, train

# Small models train with Adam; the ResNet/VGG victims with the reference SGD recipe.
DEFAULT_RECIPE = {"mlp": "adam", "logreg": "adam", "cnn": "adam", "resnet18": "reference", "vgg16": "reference"}


def default_recipe(model: str, epochs: int | None = None) -> TrainRecipe:
    """The recipe ``jaxpoison train`` uses for ``model`` unless told otherwise."""
    if model not in DEFAULT_RECIPE:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(DEFAULT_RECIPE)}.")
    return get_recipe(DEFAULT_RECIPE[model], epochs)


def _describe(dataset) -> dict:
    return {**dataclasses.asdict(dataset.provenance), "hash": dataset.content_hash, "size": len(dataset)}


def run_train_job(
    dataset: str,
    model: str,
    out: str | Path,
    recipe: TrainRecipe | None = None,
    *,
    seed: int = 0,
    devices: int | None = None,
    progress: bool = True,
    dataset_options: dict | None = None,
) -> dict:
    """Load ``dataset``, train ``model`` on its train split, evaluate on its test split.

    Writes ``out/metrics.json`` (test accuracy, timings, history, provenance and
    versions) and keeps Orbax checkpoints in ``out/checkpoints`` so an interrupted
    job resumes when run again with the same arguments.

    Returns:
      The metrics dict that was written.

    Raises:
      DivergenceError: training reached a non-finite loss or parameters.
      NonFiniteOutputError: the trained model outputs NaN or infinite logits on the test split.
      Either way no ``metrics.json`` is written: a diverged model has no accuracy to report.
    """
    recipe = recipe or default_recipe(model)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory; choose a directory path.")
    t0 = time.perf_counter()
    train_set, test_set = load_splits(dataset, **(dataset_options or {}))
    load_seconds = time.perf_counter() - t0
    net = to_functional(create_model(model, train_set.image_shape, train_set.num_classes, seed=seed), train_set.mean,
                        train_set.std)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)  # only once the data and model exist: a failed start claims nothing
    result = train(
        net,
        train_set,
        recipe,
        seed=seed,
        mesh=data_mesh(devices),
        checkpoint_dir=str(out / "checkpoints"),
        progress=progress,
    )
    test = evaluate(result.model, test_set)
    epoch_seconds = [h["seconds"] for h in result.history]
    metrics = {
        "dataset": dataset,
        "model": model,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "epochs": recipe.epochs,
        "train_seconds": float(np.sum(epoch_seconds)),
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        # The first epoch includes compilation; the steady-state figure excludes it.
        "seconds_per_epoch_after_first": float(np.mean(epoch_seconds[1:])) if len(epoch_seconds) > 1 else None,
        "load_seconds": load_seconds,
        "num_params": count_params(result.params),
        "seed": seed,
        "recipe": dataclasses.asdict(recipe),
        "history": result.history,
        "train_data": _describe(train_set),
        "test_data": _describe(test_set),
        "environment": environment(),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    return metrics
