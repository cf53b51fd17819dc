"""The run plan: XLA's per-step figures for every streamed stage, and refusing what would not fit."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpoison.cli import main
from jaxpoison.errors import InputError
from jaxpoison.experiments import ConfigError, apply_overrides, get_preset
from jaxpoison.experiments.plan import check_plan_fits, fit_batches, plan_run
from jaxpoison.influence import ScoreConfig
from jaxpoison.influence.plan import influence_stage_costs, largest_batch_within
from jaxpoison.models import create_model, to_functional

TINY = "digits-badnet-tiny"


def test_every_streamed_stage_is_planned_with_xla_figures_and_steps():
    config = get_preset(TINY)
    plan = plan_run(config, n_train=1000)
    assert [s.cost.stage for s in plan] == ["victim training", "covariance", "lambda", "scores (51 queries)"]
    assert [s.batch_key for s in plan] == ["victim.recipe.batch_size", "detection.factors.batch_size",
                                           "detection.factors.batch_size", "detection.scores.batch_size"]  # fmt: skip
    assert all(s.cost.flops > 0 and s.cost.peak_bytes > 0 for s in plan)
    assert plan[0].steps == 10 * 32 and plan[1].steps == 16 and plan[3].steps == 8  # epochs · ⌈1000 / batch⌉
    assert plan[3].total_flops == pytest.approx(8 * plan[3].cost.flops)
    assert plan_run(config)[0].steps is None  # without the training-set size: per-step figures only


def test_scoring_costs_follow_the_queries_the_batch_and_the_query_rank():
    model = to_functional(create_model("cnn", (28, 28, 1), 10))
    cost = lambda **kw: influence_stage_costs(model, (28, 28, 1), np.float32, **kw)["scores"]
    base = cost(score_config=ScoreConfig(batch_size=64))
    assert cost(score_config=ScoreConfig(batch_size=64), queries=1).flops < base.flops
    assert cost(score_config=ScoreConfig(batch_size=128)).peak_bytes > base.peak_bytes
    # the 3136→128 layer's (in + out)·Q·r ≪ in·Q·out: rank 8 needs well under half the work
    assert cost(score_config=ScoreConfig(batch_size=64, query_rank=8)).flops < 0.6 * base.flops


def test_the_largest_batch_within_a_budget_fits_and_the_next_size_up_does_not():
    model = to_functional(create_model("cnn", (28, 28, 1), 10))

    def cost_at(batch):
        return influence_stage_costs(model, (28, 28, 1), np.float32, score_config=ScoreConfig(batch_size=batch))[
            "scores"]  # fmt: skip

    budget = cost_at(96).peak_bytes
    chosen = largest_batch_within(cost_at, budget, multiple=8)
    assert cost_at(chosen).peak_bytes <= budget < cost_at(chosen + 8).peak_bytes
    assert 80 <= chosen <= 104


def test_a_run_that_would_not_fit_is_refused_before_it_starts_naming_a_batch_that_fits(tmp_path, capsys):
    config = get_preset(TINY)
    scores_step = plan_run(config)[3].cost
    budget = int(scores_step.peak_bytes * 0.8)
    config = apply_overrides(config, ["victim.recipe.batch_size=8", "detection.factors.batch_size=8"])
    refusal = r"scores \(51 queries\) step at detection\.scores\.batch_size=128 needs"
    with pytest.raises(ConfigError, match=refusal) as e:
        check_plan_fits(config, budget)
    suggested = int(str(e.value).split("detection.scores.batch_size=")[-1].split(" ")[0])
    assert suggested % 8 == 0 and suggested < 128
    check_plan_fits(apply_overrides(config, [f"detection.scores.batch_size={suggested}"]), budget)  # now it fits
    out = tmp_path / "run"
    assert main(["run", TINY, "--out", str(out), "--memory-budget", "0.0001", "--no-progress"]) != 0
    assert "victim training step at victim.recipe.batch_size=32 needs" in capsys.readouterr().err
    assert not out.exists()  # refused before the run directory was made
    assert main(["plan", TINY, "--memory-budget", "0.0001"]) == 1
    printed = capsys.readouterr()
    assert "| victim training | 32 |" in printed.out and "**no**" in printed.out and "above the" in printed.err


def test_a_stage_subset_compiles_only_those_steps_with_the_same_figures():
    config = get_preset(TINY)
    full = {s.cost.stage: s.cost for s in plan_run(config)}
    only = plan_run(config, stages=("scores",))
    assert [s.cost.stage for s in only] == ["scores (51 queries)"]
    assert only[0].cost == full["scores (51 queries)"]
    with pytest.raises(InputError, match="unknown stage"):
        plan_run(config, stages=("sores",))


def test_fitting_batches_lowers_only_what_does_not_fit_and_the_result_passes_the_check(capsys):
    config = apply_overrides(get_preset(TINY), ["victim.recipe.batch_size=8", "detection.factors.batch_size=8"])
    budget = int(plan_run(config)[3].cost.peak_bytes * 0.8)  # the scoring step alone is too large
    fitted, overrides = fit_batches(config, budget)
    assert [o.split("=")[0] for o in overrides] == ["detection.scores.batch_size"]
    assert fitted.detection.scores.batch_size < config.detection.scores.batch_size
    assert fitted.victim == config.victim and fitted.detection.factors == config.detection.factors
    check_plan_fits(fitted, budget)  # no refusal
    assert fit_batches(fitted, budget) == (fitted, [])  # already fits: unchanged
    with pytest.raises(ConfigError, match="does not fit"):
        fit_batches(config, 1024)
    assert main(["plan", TINY, "--memory-budget", str(budget / 2**30), "--fit-batches",
                 "--set", "victim.recipe.batch_size=8", "--set", "detection.factors.batch_size=8"]) == 0  # fmt: skip
    assert "--set detection.scores.batch_size=" in capsys.readouterr().out
