"""Nothing silent in training: bad recipes are refused, divergence stops the run, NaN models get no metrics."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.attacks import attack_metrics, square_patch
from jaxpoison.cli import main
from jaxpoison.errors import InputError
from jaxpoison.experiments import run_train_job
from jaxpoison.models import FunctionalModel, create_model, to_functional
from jaxpoison.training import (
    DivergenceError,
    NonFiniteOutputError,
    TrainRecipe,
    adam_recipe,
    checkpoint_manager,
    evaluate,
    predict_logits,
    reference_recipe,
    train,
)
from jaxpoison.training.evaluate import predict_labels
from tests.conftest import make_dataset

NAN, INF = float("nan"), float("inf")


def _sgd(learning_rate: float, epochs: int = 3, batch_size: int = 16) -> TrainRecipe:
    # Plain SGD: a huge step sends the logits to inf within a step or two (Adam's steps stay bounded).
    return TrainRecipe(optimizer="sgd", learning_rate=learning_rate, momentum=0.0, epochs=epochs, batch_size=batch_size)


def _mlp(data):
    return to_functional(create_model("mlp", data.image_shape, data.num_classes, hidden=(16,)), data.mean, data.std)


def _poisoned_params(model, value=NAN):
    return jax.tree.map(lambda x: jnp.full_like(x, value), model.params)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"learning_rate": NAN}, "learning_rate must be a finite number > 0; got nan"),
        ({"learning_rate": INF}, "learning_rate must be a finite number > 0; got inf"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0; got 0.0"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite number > 0; got -1.0"),
        ({"weight_decay": NAN}, "weight_decay must be a finite number ≥ 0; got nan"),
        ({"weight_decay": -1e-4}, "weight_decay must be a finite number ≥ 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\); got 1.0"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"gamma": NAN}, "gamma must be a finite number > 0"),
        ({"epochs": 0}, "epochs must be an integer ≥ 1; got 0"),
        ({"epochs": 2.5}, "epochs must be an integer ≥ 1; got 2.5"),
        ({"batch_size": 0}, "batch_size must be an integer ≥ 1; got 0"),
        ({"crop_padding": -1}, "crop_padding must be an integer ≥ 0"),
        ({"milestones": (5, 3)}, r"milestones must be strictly increasing epochs inside \(0, epochs=10\)"),
        ({"milestones": (3, 3)}, "milestones must be strictly increasing"),
        ({"milestones": (10,)}, r"inside \(0, epochs=10\); got \(10,\)"),
        ({"milestones": (0, 4)}, "milestones must be strictly increasing"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    ],
)
def test_recipe_refuses_bad_fields_at_construction(changes, message):
    with pytest.raises(InputError, match=message):
        TrainRecipe(**changes)
    with pytest.raises(InputError, match=message):  # and through replace, as the CLI's --lr does
        adam_recipe().replace(**changes)


def test_shortening_a_recipe_drops_the_milestones_it_no_longer_reaches():
    recipe = reference_recipe(40).replace(epochs=20)
    assert recipe.milestones == (14,) and recipe.epochs == 20
    assert reference_recipe(40).replace(epochs=20, milestones=(5,)).milestones == (5,)
    with pytest.raises(InputError, match="milestones"):
        reference_recipe(40).replace(epochs=20, milestones=(25,))


def test_cli_refuses_a_nan_learning_rate_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--model", "logreg", "--lr", "nan", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 2
    assert "learning_rate must be a finite number > 0; got nan" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "learning_rate, message",
    [
        (1e30, r"loss is nan at epoch 1, step 2 of 4; lower the learning rate \(now 1e\+30\)"),
        # Later blow-ups: where exactly depends on float rounding, so only the form is pinned.
        (1e6, r"loss is (nan|inf) at epoch [1-3], step [1-4] of 4; lower the learning rate \(now 1e\+06\)"),
        (1e4, r"loss is (nan|inf) at epoch [1-3], step [1-4] of 4"),
    ],
)
def test_divergence_stops_training_naming_epoch_and_step(learning_rate, message):
    data = make_dataset()
    seen = []
    with pytest.raises(DivergenceError, match=message) as caught:
        train(_mlp(data), data, _sgd(learning_rate), progress=False, on_epoch_end=seen.append)
    assert "training diverged" in str(caught.value) and "check the data for non-finite values" in str(caught.value)
    assert all(np.isfinite(r["train_loss"]) for r in seen)  # no diverged epoch reached the history
    assert isinstance(caught.value, InputError)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_parameters_blown_up_by_the_last_step_of_an_epoch_are_caught():
    # One step per epoch at a learning rate that overflows float32: the loss was computed before the
    # update and is finite, the parameters after it are not.
    data = make_dataset()
    with pytest.raises(DivergenceError, match="parameters are non-finite after epoch 1, step 1 of 1"):
        train(_mlp(data), data, _sgd(1e39, epochs=2, batch_size=64), progress=False)


def test_non_finite_starting_parameters_stop_at_the_first_step():
    data = make_dataset()
    model = _mlp(data)
    with pytest.raises(DivergenceError, match="loss is nan at epoch 1, step 1 of 4"):
        train(model.replace(params=_poisoned_params(model)), data, adam_recipe(epochs=1, batch_size=16),
              progress=False)  # fmt: skip


def test_the_diverged_epoch_is_not_checkpointed(tmp_path):
    data = make_dataset()
    with pytest.raises(DivergenceError, match=r"at epoch (\d+), step") as caught:
        train(_mlp(data), data, _sgd(1e6), checkpoint_dir=str(tmp_path), progress=False)
    diverged = int(re.search(r"at epoch (\d+),", str(caught.value)).group(1))
    assert diverged >= 2  # so that an earlier, finite epoch was saved
    assert checkpoint_manager(tmp_path).latest_step() == diverged - 1


def test_divergence_in_evaluated_training_names_the_step_not_the_eval():
    # The check runs before the per-epoch evaluation, which would only say "non-finite outputs".
    data = make_dataset()
    with pytest.raises(DivergenceError, match="epoch 1, step 2 of 4"):
        train(_mlp(data), data, _sgd(1e30), eval_dataset=make_dataset(seed=1), progress=False)


def test_train_job_writes_no_metrics_for_a_diverged_model(tmp_path):
    out = tmp_path / "job"
    recipe = _sgd(1e30, epochs=2, batch_size=256)
    with pytest.raises(DivergenceError, match=r"training diverged: loss is nan at epoch 1, step 2 of \d+"):
        run_train_job("digits", "mlp", out, recipe, progress=False)
    assert not (out / "metrics.json").exists()
    assert checkpoint_manager(out / "checkpoints").latest_step() is None


@pytest.mark.parametrize("value", [NAN, INF])
def test_accuracy_of_a_non_finite_model_is_refused(value):
    data = make_dataset()
    model = _mlp(data)
    params = _poisoned_params(model, value)
    with pytest.raises(NonFiniteOutputError, match=r"non-finite outputs .* on 64 of 64 examples"):
        evaluate(model.replace(params=params), data)
    with pytest.raises(NonFiniteOutputError, match="non-finite outputs"):
        predict_logits(model.replace(params=params), data, batch_size=10)  # padded last batch
    with pytest.raises(NonFiniteOutputError, match="lower learning rate"):
        predict_labels(model.replace(params=params), data)


@dataclasses.dataclass(frozen=True)
class _LogStructure:
    """A hand-written model structure: finite for every normalised pixel above -2, i.e. every pixel above 0."""

    def apply(self, params, state, x):
        return jnp.log(x.reshape(len(x), -1)[:, :4] + 2.0)

    def features(self, params, state, x):
        return x.reshape(len(x), -1)

    def train_apply(self, params, state, x):
        return self.apply(params, state, x), state


def _log_model(data):
    return FunctionalModel({}, {}, _LogStructure()).with_normalization(data.mean, data.std)


def test_one_non_finite_example_is_enough_to_refuse():
    # One image whose logits are -inf, counted (the padded rows of the last batch are not), not averaged away.
    data = make_dataset()
    images = data.images.copy()
    images[:, 0, 0, 0] = np.maximum(images[:, 0, 0, 0], 0.01)
    clean = data.replace(images=images)
    assert evaluate(_log_model(data), clean, batch_size=16).predictions.shape == (64,)
    images[5, 0, 0, 0] = 0.0
    with pytest.raises(NonFiniteOutputError, match="on 1 of 64 examples"):
        evaluate(_log_model(data), data.replace(images=images), batch_size=24)


@pytest.mark.parametrize("target", [0, 2])
def test_attack_metrics_of_a_nan_model_are_refused_not_a_perfect_asr(target):
    # NaN logits argmax to class 0: with target 0 the old code reported ASR 1.0.
    data = make_dataset()
    model = _mlp(data)
    trigger = square_patch(data.image_shape, size=2, color=(1.0,), margin=0)
    with pytest.raises(NonFiniteOutputError, match="the model produces non-finite outputs"):
        attack_metrics(model.replace(params=_poisoned_params(model)), data, trigger, target=target)


def test_finite_models_predict_as_before():
    data = make_dataset()
    model = _mlp(data)
    logits = predict_logits(model, data, batch_size=10)
    labels = predict_labels(model, data, batch_size=10)
    np.testing.assert_array_equal(labels, logits.argmax(-1))
    trigger = square_patch(data.image_shape, size=2, color=(1.0,), margin=0)
    metrics = attack_metrics(model, data, trigger, target=0)
    assert 0.0 <= metrics["asr"] <= 1.0
    assert metrics["clean_accuracy"] == evaluate(model, data).accuracy
