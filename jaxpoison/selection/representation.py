"""RD: representation-distance greedy search of Wu et al. (ICCV 2023).

The RD score of a poisoned sample ``x̃`` (trigger applied, label = target) under a model
``f`` is ``‖softmax(f(x̃)) − onehot(target)‖₂``: how far the model still is from
obeying the trigger on it. Poisons the model has already fitted (low RD) teach the
backdoor little; the greedy search keeps the hard ones. Starting from a random set, for
``rounds`` rounds:

1. train a fresh score model for ``score_epochs`` epochs on the currently poisoned set;
2. score the current poisons;
3. drop the ``round(ratio · k)`` lowest-RD poisons and replace them by as many drawn
   uniformly from the out-pool (pool minus the current set, so the ones just dropped are
   not redrawn this round); the dropped ones then return to the out-pool;
4. ``ratio ← ratio · decay``.

As in the reference code the replacement also follows the last round, so the result is
the last round's survivors plus a fresh random draw of ``round(k · ratio · decay^(rounds−1))``
poisons (:func:`final_refill`): 43 % of the set after 3 rounds, about 6 % after the
reference's 30. ``info["refilled_share"]`` reports that share, so a short search is not
mistaken for a selective one.

Reference values (official ``WU-YU-TONG/computational_efficient_backdoor`` and the
``RorschachChen`` re-implementation): 30 rounds, score model ResNet-18 trained 6 epochs
(SGD Nesterov 0.05, batch 128; the re-implementation uses Adam 0.002), ratio 0.5,
decay 0.93, poisons relabelled in place. jaxpoison trains its small models with Adam
and defaults to fewer rounds and epochs so the search runs on a CPU (see :class:`RDConfig`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jaxpoison.attacks.poison import PoisonConfig, poison_dataset
from jaxpoison.data import Dataset
from jaxpoison.models import FunctionalModel
from jaxpoison.progress import progress_bar
from jaxpoison.selection.common import (
    ProxyTrainer,
    Selection,
    SelectionError,
    finish,
    forward,
    poison_budget,
    round_seed,
)


@dataclasses.dataclass(frozen=True)
class RDConfig:
    """Settings of the RD greedy search (reference values in brackets).

    Attributes:
      rounds: greedy rounds [30]. Default 10.
      score_epochs: score-model training epochs per round [6]. Default 3.
      ratio: initial fraction of the poisons replaced per round [0.5].
      decay: factor applied to ``ratio`` after every round [0.93].
      model: score-model architecture [ResNet-18]. Default ``"cnn"``.
      model_kwargs: extra constructor arguments (e.g. ``{"width": 4, "hidden": 16}``).
      learning_rate: Adam learning rate [SGD 0.05 / Adam 0.002]. Default 1e-3.
      batch_size: score-model batch size [128].
    """

    rounds: int = 10
    score_epochs: int = 3
    ratio: float = 0.5
    decay: float = 0.93
    model: str = "cnn"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    learning_rate: float = 1e-3
    batch_size: int = 128

    def __post_init__(self):
        if self.rounds < 1 or self.score_epochs < 1:
            raise SelectionError(f"rounds and score_epochs must be ≥ 1; got {self.rounds} and {self.score_epochs}.")
        if not 0.0 < self.ratio < 1.0 or not 0.0 < self.decay <= 1.0:
            raise SelectionError(f"ratio must lie in (0, 1) and decay in (0, 1]; got {self.ratio} and {self.decay}.")
        if self.learning_rate <= 0 or self.batch_size < 1:
            raise SelectionError("learning_rate must be positive and batch_size ≥ 1.")


def representation_distance(logits, target: int) -> np.ndarray:
    """``‖softmax(logits) − onehot(target)‖₂`` per row of ``logits [n, C]`` (float64)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or not 0 <= target < logits.shape[1]:
        raise SelectionError(f"need logits [n, C] and a target in [0, C); got {logits.shape} and {target}.")
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[:, target] -= 1.0
    return np.linalg.norm(probs, axis=1)


def final_refill(k: int, rounds: int, ratio: float, decay: float) -> int:
    """Poisons drawn at random after the last of ``rounds`` rounds: ``round(k · ratio · decay^(rounds−1))``.

    The reference's rounding (``int(x + 0.5)``); :func:`rd_selection` caps it by the out-pool,
    which only binds when the rate takes nearly the whole pool.
    """
    if k < 0 or rounds < 1:
        raise SelectionError(f"need k ≥ 0 and rounds ≥ 1; got k={k}, rounds={rounds}.")
    # the same sequence of float products as rd_selection, so the rounding agrees exactly
    last = ratio
    for _ in range(rounds - 1):
        last *= decay
    return int(k * last + 0.5)


def rd_scores(model: FunctionalModel, images_triggered: Dataset, target: int, batch_size: int = 512) -> np.ndarray:
    """RD of every image of ``images_triggered`` (pixel space) under ``model`` in inference mode: ``float64 [n]``."""
    logits = forward(model, images_triggered, batch_size)
    return representation_distance(logits, target)


def rd_selection(
    dataset: Dataset,
    trigger,
    target: int,
    rate: float,
    config: RDConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> Selection:
    """Choose ``round(rate · N)`` poisons by RD greedy search (see the module docstring).

    Args:
      dataset: the clean training set.
      trigger: a jaxpoison trigger (``apply`` and ``describe``).
      target: the attack's target class; poisons come from every other class.
      rate: poisons as a fraction of the training set.
      config: an :class:`RDConfig` (default: ``RDConfig()``).
      seed: seeds the initial draw, the refills and each round's score model.
      progress: show a progress bar over rounds.

    Returns:
      A :class:`Selection`; ``scores`` are the last round's RD of the surviving poisons and
      ``NaN`` for the final refill. ``info["rounds"]`` holds one record per round
      (``seconds``, ``ratio``, ``replaced``, ``mean_rd``, ``min_kept_rd``); ``info["initial"]`` is
      the random starting set. ``info["refilled"]`` and ``info["refilled_share"]``: the final
      random draw (never scored) as a count and as a share of ``k``; ``info["initial_share"]``:
      the share of the final set that was in the initial random draw (a dropped poison
      returns to the out-pool and can be drawn again later).
    """
    config = RDConfig() if config is None else config
    start = time.perf_counter()
    pool, k = poison_budget(dataset, target, rate)
    rng = np.random.default_rng([seed, 0x4D])
    current = np.sort(rng.choice(pool, k, replace=False))
    initial = np.sort(current)
    trainer = ProxyTrainer(config.model, config.model_kwargs, dataset, epochs=config.score_epochs,
                           learning_rate=config.learning_rate, batch_size=config.batch_size)  # fmt: skip
    ratio, rounds = config.ratio, []
    survivors_scores, n_new = np.zeros(0), 0
    bar = progress_bar(range(config.rounds), desc="RD rounds", disable=not progress)
    for r in bar:
        t0 = time.perf_counter()
        poisoned = poison_dataset(dataset, trigger, PoisonConfig(target=target, indices=tuple(current.tolist())))
        model = trainer.fit(poisoned.dataset, round_seed(seed, r, 0x4D), progress=progress, desc="RD score model")
        rd = rd_scores(model, poisoned.dataset.subset(poisoned.poison_indices), target)
        out_pool = np.setdiff1d(pool, poisoned.source_indices)
        # The reference's rounding; capped by the out-pool (empty when the rate takes the whole pool).
        n_drop = min(int(k * ratio + 0.5), out_pool.size)
        order = np.argsort(rd, kind="stable")  # ascending: the easiest poisons first
        survivors = poisoned.source_indices[order[n_drop:]]
        survivors_scores = rd[order[n_drop:]]
        added = rng.choice(out_pool, n_drop, replace=False)
        current, n_new = np.concatenate([survivors, added]), n_drop
        rounds.append({
            "round": r + 1,
            "seconds": time.perf_counter() - t0,
            "ratio": ratio,
            "replaced": n_drop,
            "mean_rd": float(rd.mean()),
            "min_kept_rd": float(survivors_scores.min()) if survivors_scores.size else None,
        })  # fmt: skip
        bar.set_postfix(rd=f"{rd.mean():.3f}")
        ratio *= config.decay
    scores = np.concatenate([survivors_scores, np.full(n_new, np.nan)])
    info = {
        "method": "rd",
        "k": k,
        "pool": int(pool.size),
        "seed": seed,
        "config": dataclasses.asdict(config),
        "initial": initial,
        "rounds": rounds,
        "refilled": int(n_new),
        "refilled_share": n_new / k,
        "initial_share": float(np.isin(current, initial).mean()),
        "seconds": time.perf_counter() - start,
    }
    return finish(current, scores, info)
