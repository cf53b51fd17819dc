"""Progress bars name the stage they belong to and its position in the run."""

from __future__ import annotations

import threading

from jaxpoison.experiments import apply_overrides, get_preset
from jaxpoison.experiments.pipeline import stage_count
from jaxpoison.progress import current_stage, describe, progress_bar, stage, stages


def test_stages_are_numbered_in_order_and_nest():
    assert current_stage() is None and describe("epoch 1/3") == "epoch 1/3"
    with stages(3):
        with stage("clean model") as label:
            assert label == "[1/3] clean model"
            assert describe("epoch 1/3") == "[1/3] clean model · epoch 1/3"
        with stage("victim"):
            with stage("surrogate") as inner:  # a stage inside a stage adds its name, not a position
                assert inner == "[2/3] victim · surrogate"
                assert describe() == "[2/3] victim · surrogate"
            assert current_stage() == "[2/3] victim"
        with stage("detect: Δ-Influence"):
            assert describe("scoring 51 queries") == "[3/3] detect: Δ-Influence · scoring 51 queries"
    assert current_stage() is None
    with stage("EK-FAC factors"):  # outside a numbered run: the name alone
        assert describe("covariance") == "EK-FAC factors · covariance"


def test_a_thread_keeps_its_own_stage():
    seen = {}

    def work():
        seen["other"] = current_stage()

    with stage("victim"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        seen["here"] = current_stage()
    assert seen == {"other": None, "here": "victim"}


def test_bars_show_the_stage(capsys, tiny_dataset):
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.training import adam_recipe, train

    module = create_model("mlp", tiny_dataset.image_shape, tiny_dataset.num_classes)
    model = to_functional(module, tiny_dataset.mean, tiny_dataset.std)
    with stages(2):
        with stage("clean model"):
            pass
        with stage("victim"):
            for _ in progress_bar(range(3), desc="epoch 1/3"):
                pass
            train(model, tiny_dataset, adam_recipe(epochs=1, batch_size=16))
    err = capsys.readouterr().err
    assert "[2/2] victim · epoch 1/3" in err
    assert "[2/2] victim · epoch 1/1" in err  # train()'s own bar


def test_stage_count_follows_the_config():
    tiny = get_preset("digits-badnet-tiny")
    # clean, poison, victim, test point, factors, 4 detectors, Δ-Influence × (EU, CF)
    assert stage_count(tiny) == 4 + 1 + 4 + 2
    no_factors = apply_overrides(tiny, ["detection.methods=spectral", "unlearning.detectors=spectral",
                                        "unlearning.methods=eu,cf,ssd"])  # fmt: skip
    assert stage_count(no_factors) == 4 + 1 + 3


def test_attack_and_selection_loops_name_their_stage(capsys):
    """The smooth trigger's passes and RD's rounds run inside a run's stage; their bars say which."""
    from jaxpoison.attacks import make_smooth_trigger, square_patch
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.selection import RDConfig, rd_selection
    from tests.conftest import make_dataset

    data = make_dataset(n=80, shape=(8, 8, 1), num_classes=4)
    model = to_functional(create_model("mlp", data.image_shape, 4, hidden=(8,)), data.mean, data.std)
    with stages(3):
        with stage("clean model"):
            pass
        with stage("poison"):
            make_smooth_trigger(model, data.images[:8], target=0, max_passes=1, deepfool_iterations=2)
            rd = RDConfig(rounds=1, score_epochs=1, model="mlp", model_kwargs={"hidden": (8,)}, batch_size=16)
            rd_selection(data, square_patch(data.image_shape, size=2), 0, 0.1, rd)
    err = capsys.readouterr().err
    assert "[2/3] poison · smooth trigger passes" in err
    assert "[2/3] poison · RD rounds" in err
