"""Data-parallel training of a functional model with optax, checkpoints and resume.

The train step, :func:`train_step`, is one jitted pure function of ``(model, opt_state,
key, images, labels)``. Batches are split over a 1-D device mesh along the example axis
and everything else is replicated, so 1 device and N devices run the same
computation (the global-view ``jit`` inserts the cross-device means, including
BatchNorm's batch statistics).

Randomness is derived, never carried: the epoch's permutation comes from
``(seed, epoch)`` and each step's augmentation key from ``(seed, epoch, step)``. An
interrupted run resumed from its last checkpoint therefore ends with exactly the
parameters of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.data import Dataset, augment_batch, require_images
from jaxpoison.errors import InputError
from jaxpoison.models import FunctionalModel
from jaxpoison.progress import progress_bar
from jaxpoison.sharding import data_mesh, local_rows, replicate, shard_local_batch, to_host
from jaxpoison.training import checkpoint as ckpt
from jaxpoison.training.evaluate import NonFiniteOutputError, evaluate
from jaxpoison.training.recipes import TrainRecipe


class DivergenceError(NonFiniteOutputError):
    """Training reached a non-finite loss or parameters: usually too high a learning rate, or non-finite data."""


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      model: the trained model (parameters and state replicated over the mesh).
      history: one dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
        ``seconds`` and, with an eval dataset, ``eval_accuracy``.
      step_losses: ``[steps]``, the loss of every step run in this call (in the model's dtype).
      train_seconds: wall time of the epochs run in this call (compilation included).
    """

    model: FunctionalModel
    history: list[dict]
    step_losses: np.ndarray
    train_seconds: float

    @property
    def params(self) -> Any:
        return self.model.params

    @property
    def state(self) -> Any:
        return self.model.state


@functools.partial(jax.jit, static_argnames=("recipe", "steps_per_epoch"), donate_argnums=(0, 1))
def train_step(model: FunctionalModel, opt_state, key, x, y, *, recipe: TrainRecipe, steps_per_epoch: int):
    """One optimiser step: ``(model, opt_state, key, x, y) -> (model, opt_state, loss, correct)``.

    ``x`` holds pixel-space images; the step augments (as the recipe says) and takes one
    step of the recipe's optimiser on the mean cross-entropy of ``model.train_logits(x)``
    (the model normalises its own inputs). ``correct`` is the number of correctly classified
    examples. Compiled once per model structure, recipe and batch shape, whoever calls it;
    ``model`` and ``opt_state`` are donated.
    """
    optimizer = recipe.optimizer_for(steps_per_epoch)
    if recipe.crop_padding > 0 or recipe.flip or recipe.vflip:
        x = augment_batch(key, x, recipe.crop_padding, recipe.flip, recipe.vflip)

    def loss_fn(params):
        logits, new_state = model.replace(params=params).train_logits(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, logits)

    (loss, (state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(model.params)
    updates, opt_state = optimizer.update(grads, opt_state, model.params)
    model = model.replace(params=optax.apply_updates(model.params, updates), state=state)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return model, opt_state, loss, correct


def _checkpoint_meta(recipe: TrainRecipe, dataset: Dataset, seed: int) -> dict:
    meta = {"recipe": dataclasses.asdict(recipe), "dataset_hash": dataset.content_hash, "seed": seed}
    return json.loads(json.dumps(meta))  # as it reads back from disk (tuples become lists)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _check_finite(epoch_losses: np.ndarray, model: FunctionalModel, epoch: int, recipe: TrainRecipe) -> None:
    """Raise :class:`DivergenceError` naming the first non-finite step of ``epoch`` (counted from 0)."""
    steps = epoch_losses.size
    advice = f"lower the learning rate (now {recipe.learning_rate:g}) or check the data for non-finite values."
    bad = np.flatnonzero(~np.isfinite(epoch_losses))
    if bad.size:
        s = int(bad[0])
        raise DivergenceError(
            f"training diverged: loss is {epoch_losses[s]} at epoch {epoch + 1}, step {s + 1} of {steps}; {advice}"
        )
    # The last step of an epoch can blow up the parameters with a finite loss; its epoch must not be saved.
    if not bool(_all_finite((model.params, model.state))):
        raise DivergenceError(
            f"training diverged: the parameters are non-finite after epoch {epoch + 1}, step {steps} of {steps} "
            f"(every loss was finite); {advice}"
        )


class UnnormalisedInputWarning(UserWarning):
    """A model without input normalisation trains on a dataset that has normalisation constants."""


def check_normalization(model: FunctionalModel, dataset: Dataset) -> None:
    """Warn when ``model`` has no normalisation but ``dataset`` declares constants other than (0, 1).

    The model normalises its own inputs; a model built without the dataset's constants sees raw
    pixels, which trains (worse) without any error, so it is said out loud.
    """
    if model.normalization is not None:
        return
    if np.allclose(dataset.mean, 0.0) and np.allclose(dataset.std, 1.0):
        return
    warnings.warn(
        f"the model has no input normalisation, but the training set's constants are mean={np.round(dataset.mean, 4)}, "
        f"std={np.round(dataset.std, 4)}: it trains on raw inputs. Build it with to_functional(module, data.mean, "
        "data.std) (or from_linen / from_equinox with mean= and std=) to normalise, or pass "
        "model.with_normalization(0.0, 1.0) to train on raw inputs on purpose.",
        UnnormalisedInputWarning,
        stacklevel=3,
    )


def train(
    model: FunctionalModel,
    dataset: Dataset,
    recipe: TrainRecipe,
    *,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    eval_dataset: Dataset | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_epoch_state: Callable[[int, FunctionalModel], None] | None = None,
    step_fn: Callable | None = None,
    optimizer: optax.GradientTransformation | None = None,
    order: Callable[[int], np.ndarray] | None = None,
    key: jax.Array | None = None,
    desc: str | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` following ``recipe``.

    Args:
      model: the functional model; its ``params``/``state`` are the starting point.
      dataset: training data (pixel space; the model normalises it).
      recipe: optimiser, schedule, batch size, epochs and augmentation.
      seed: seeds the epoch permutations and augmentation keys.
      mesh: a 1-D ``"data"`` mesh (default: all devices). The batch size must be
        divisible by its size.
      eval_dataset: if given, evaluated after every epoch (``eval_accuracy``).
      checkpoint_dir: if given, the state is saved after every epoch and a run
        that finds checkpoints there resumes from the newest one.
      progress: show a progress bar per epoch.
      on_epoch_end: called with each epoch's history record (after checkpointing).
      on_epoch_state: called with ``(epoch index, model)`` after each epoch, for
        callers that read the model itself as it trains (FUS's per-epoch correctness).
      step_fn: a step of :func:`train_step`'s signature to use instead of it (e.g. with
        another loss or input transform, as FreqDef's detector); it receives the replicated
        model and the optimiser's state.
      optimizer: the optimiser whose state ``step_fn`` updates (default: the recipe's). Only
        with ``step_fn``, which must apply this same optimiser.
      order: ``order(epoch) -> indices``, the example order of an epoch (default: a permutation
        drawn from ``(seed, epoch)``); each epoch runs ``len(dataset) // batch_size`` steps over it.
      key: the base key of the step keys (default ``jax.random.key(seed)``); step ``s`` of epoch
        ``e`` gets ``fold_in(fold_in(key, e), s)``.
      desc: what is training, for the progress bar (``"surrogate · epoch 2/5"``); the bar also
        names the enclosing :func:`jaxpoison.progress.stage` (``"[3/10] victim · epoch 2/5"``).

    Returns:
      A :class:`TrainResult`. Each epoch drops the last partial batch (a different
      one every epoch, since the order is reshuffled).

    Raises:
      ValueError: a batch larger than the dataset, or not divisible by the devices.
      CheckpointError: the checkpoint directory belongs to another run.
      DivergenceError: a loss or, at an epoch's end, a parameter is NaN or infinite; the
        message names the epoch and step. That epoch is not checkpointed.
    """
    mesh = data_mesh() if mesh is None else mesh
    n = len(dataset)
    check_normalization(model, dataset)
    if recipe.crop_padding > 0 or recipe.flip or recipe.vflip:
        require_images(dataset, "augmentation (the recipe's crop_padding / flip / vflip)")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer; got {seed!r}.")
    if recipe.batch_size > n:
        raise InputError(f"batch_size {recipe.batch_size} exceeds the {n} training examples; lower it.")
    if recipe.batch_size % mesh.devices.size:
        raise InputError(
            f"batch_size {recipe.batch_size} is not divisible by the {mesh.devices.size} devices of the mesh."
        )
    steps_per_epoch = n // recipe.batch_size
    if optimizer is not None and step_fn is None:
        raise InputError("an optimizer override needs the step_fn that applies it; train_step uses the recipe's.")
    optimizer = recipe.optimizer_for(steps_per_epoch) if optimizer is None else optimizer
    model = replicate(mesh, model)
    opt_state = replicate(mesh, optimizer.init(model.params))
    history: list[dict] = []
    start_epoch = 0

    manager = None
    meta = _checkpoint_meta(recipe, dataset, seed)
    if checkpoint_dir is not None:
        manager = ckpt.checkpoint_manager(checkpoint_dir)
        def same_run(saved: dict) -> None:
            if saved.get("run") != meta:
                raise ckpt.CheckpointError(
                    f"{checkpoint_dir} holds checkpoints of another run (different recipe, data or seed). "
                    "Use a fresh directory to start over."
                )

        found = ckpt.restore_latest(manager, {"params": model.params, "state": model.state, "opt_state": opt_state},
                                    accept=same_run)  # fmt: skip
        if found is not None:
            _, tree, saved = found
            params, state, opt_state = replicate(mesh, (tree["params"], tree["state"], tree["opt_state"]))
            model = model.replace(params=params, state=state)
            history = list(saved["history"])
            start_epoch = int(saved["epoch"])

    if step_fn is None:
        step_fn = functools.partial(train_step, recipe=recipe, steps_per_epoch=steps_per_epoch)
    base_key = jax.random.key(seed) if key is None else key
    step_losses: list[jax.Array] = []
    t_start = time.perf_counter()
    for epoch in range(start_epoch, recipe.epochs):
        t_epoch = time.perf_counter()
        epoch_order = np.random.default_rng([seed, epoch]).permutation(n) if order is None else np.asarray(order(epoch))
        epoch_key = jax.random.fold_in(base_key, epoch)
        losses, corrects = [], []
        label = f"epoch {epoch + 1}/{recipe.epochs}" if desc is None else f"{desc} · epoch {epoch + 1}/{recipe.epochs}"
        bar = progress_bar(range(steps_per_epoch), desc=label, disable=not progress)  # named after the current stage
        for s in bar:
            idx = epoch_order[s * recipe.batch_size : (s + 1) * recipe.batch_size]
            mine = idx[local_rows(mesh, idx.size)]  # with several processes, each reads only its own rows
            x, y = shard_local_batch(mesh, idx.size, dataset.images[mine], dataset.labels[mine])
            model, opt_state, loss, correct = step_fn(model, opt_state, jax.random.fold_in(epoch_key, s), x, y)
            losses.append(loss)
            corrects.append(correct)
            if progress and s % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        # The epoch's losses come to the host here anyway, so checking them costs no extra sync per step;
        # it runs before the evaluation and the checkpoint, which would record a diverged epoch.
        epoch_losses = np.asarray(to_host(losses), np.float32)
        _check_finite(epoch_losses, model, epoch, recipe)
        step_losses.extend(losses)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(epoch_losses.mean()),
            "train_accuracy": float(np.sum(to_host(corrects)) / (steps_per_epoch * recipe.batch_size)),
        }
        if eval_dataset is not None:
            record["eval_accuracy"] = evaluate(model, eval_dataset).accuracy
        record["seconds"] = time.perf_counter() - t_epoch
        history.append(record)
        if manager is not None:
            ckpt.save(
                manager,
                epoch + 1,
                {"params": model.params, "state": model.state, "opt_state": opt_state},
                {"epoch": epoch + 1, "history": history, "run": meta},
            )
        if on_epoch_end is not None:
            on_epoch_end(record)
        if on_epoch_state is not None:
            on_epoch_state(epoch, model)
    seconds = time.perf_counter() - t_start
    losses_host = np.asarray(to_host(step_losses)).reshape(-1) if step_losses else np.zeros(0, np.float32)
    return TrainResult(model, history, losses_host, seconds)
