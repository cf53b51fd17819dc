"""FUS: the Filtering-and-Updating Strategy of Xia et al. (IJCAI 2022).

Poisons that the model keeps *forgetting* during training (its prediction of the target
flips from right to wrong) are the ones that shape the backdoor most. FUS starts from a
random poison set and, for ``rounds`` rounds:

1. poisons the training set with the current indices;
2. trains a fresh proxy model for ``epochs`` epochs, recording after every epoch whether
   each poisoned copy is predicted as the target;
3. counts each poison's forgetting events (1 → 0 transitions of that record);
4. keeps the ``keep_fraction`` with the most events and refills the rest uniformly at
   random from the pool.

A sequence of ``E`` per-epoch records holds at most ``E // 2`` forgetting events, so short
proxy trainings leave most poisons tied (two epochs: 0 or 1 event each) and the kept half
is then chosen mostly by the random tie-break. The selection's ``info["events"]`` reports
the histogram of events over the last round's candidates and over the kept poisons, and
how many of the kept were chosen by a tie-break, so a run can tell signal from ties.

As in the reference code (``xpf/Data-Efficient-Backdoor-Attacks``, ``search.py``) the
refill also follows the last round, so the returned set is the last round's survivors
plus a fresh random draw.

Differences from the reference, all deliberate:

* ``mode="replace"`` by default (the poisoned image replaces the clean one, as everywhere
  else in jaxpoison); the reference *appends* triggered copies and keeps the clean
  originals — ``mode="append"`` reproduces that.
* Correctness is recorded once per epoch on the un-augmented poisoned copies, in inference
  mode, with the parameters at the end of the epoch. The reference records the prediction
  on the augmented copy inside the training step, before that step's update. Doing it after
  the epoch lets the proxy be trained by the library's own jitted step (one optimiser state
  across epochs, no per-example bookkeeping inside the step) at the cost of one forward
  pass over the ``k`` poisons per epoch.
* The refill draws from the pool *minus the kept set*, so the set never holds duplicates;
  the reference drew from the whole pool and could re-draw kept samples (duplicates).
  Ties in the forgetting counts (common: many poisons have 0 events) are broken at random
  (seeded); the reference's ``argsort`` broke them arbitrarily.
* The proxy is the library's small models trained with Adam (defaults below) instead of
  VGG-16 with SGD 0.01, momentum 0.9, weight decay 5e-4, batch 256, steps at 35 and 55.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jaxpoison.attacks.poison import PoisonConfig, poison_dataset
from jaxpoison.data import Dataset
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
class FUSConfig:
    """Settings of the FUS search (reference values in brackets).

    Attributes:
      rounds: filter-and-update iterations [10]. Default 5.
      epochs: proxy training epochs per round [70]. Default 10.
      keep_fraction: share of the poisons kept each round (by forgetting events) [0.5].
      mode: ``"replace"`` (jaxpoison's convention) or ``"append"`` (the reference's copies).
      model: proxy architecture for :func:`jaxpoison.models.create_model` [VGG-16]. Default ``"cnn"``.
      model_kwargs: extra constructor arguments (e.g. ``{"width": 4, "hidden": 16}``).
      learning_rate: Adam learning rate [SGD 0.01]. Default 1e-3.
      batch_size: proxy batch size [256]. Default 128.
    """

    rounds: int = 5
    epochs: int = 10
    keep_fraction: float = 0.5
    mode: str = "replace"
    model: str = "cnn"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    learning_rate: float = 1e-3
    batch_size: int = 128

    def __post_init__(self):
        if self.rounds < 1 or self.epochs < 2:
            raise SelectionError(
                f"FUS needs rounds ≥ 1 and epochs ≥ 2 (a forgetting event spans two epochs); "
                f"got rounds={self.rounds}, epochs={self.epochs}."
            )
        if not 0.0 < self.keep_fraction < 1.0:
            raise SelectionError(f"keep_fraction must lie in (0, 1); got {self.keep_fraction}.")
        if self.mode not in ("replace", "append"):
            raise SelectionError(f"mode must be 'replace' or 'append'; got {self.mode!r}.")
        if self.learning_rate <= 0 or self.batch_size < 1:
            raise SelectionError("learning_rate must be positive and batch_size ≥ 1.")


def count_forgetting_events(correct) -> np.ndarray:
    """Forgetting events per example: the number of 1 → 0 transitions along the epoch axis.

    Args:
      correct: ``bool [epochs, k]`` (or 0/1 integers): whether example ``j`` was predicted
        correctly (here: as the target) after epoch ``e``.

    Returns:
      ``int64 [k]``. E.g. ``[1, 0, 1, 0] → 2``, ``[0, 0, 1, 1] → 0``, ``[1, 1, 0, 0] → 1``.
    """
    correct = np.asarray(correct)
    if correct.ndim != 2:
        raise SelectionError(f"correct must be a 2-D [epochs, k] array; got shape {correct.shape}.")
    if correct.dtype != bool:
        if not np.issubdtype(correct.dtype, np.integer) or not np.isin(correct, (0, 1)).all():
            raise SelectionError("correct must hold booleans (or 0/1 integers).")
        correct = correct.astype(bool)
    return np.sum(correct[:-1] & ~correct[1:], axis=0, dtype=np.int64)


def event_histogram(events) -> list[int]:
    """Counts of 0, 1, 2, … forgetting events: ``hist[e]`` = number of examples with ``e`` events.

    ``[0, 2, 1, 0, 0, 3] → [3, 1, 1, 1]``; an empty input gives ``[]``.
    """
    events = np.asarray(events)
    if events.size == 0:
        return []
    if events.ndim != 1 or not np.issubdtype(events.dtype, np.integer) or events.min() < 0:
        raise SelectionError("events must be a 1-D array of non-negative integers.")
    return np.bincount(events).astype(int).tolist()


def _kept_by_tie_break(events: np.ndarray, kept_events: np.ndarray) -> int:
    """How many kept examples sit at the cut-off value whose group the keep/drop line split.

    Those were chosen by the random tie-break, not by their events; 0 when the cut falls
    between two event values.
    """
    if kept_events.size == 0:
        return 0
    cutoff = kept_events.min()
    at_cutoff_kept = int(np.sum(kept_events == cutoff))
    return at_cutoff_kept if int(np.sum(events == cutoff)) > at_cutoff_kept else 0


def fus_selection(
    dataset: Dataset,
    trigger,
    target: int,
    rate: float,
    config: FUSConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> Selection:
    """Choose ``round(rate · N)`` poisons by FUS (see the module docstring).

    Args:
      dataset: the clean training set.
      trigger: an object with ``apply(images) -> images`` and ``describe()`` (a jaxpoison trigger).
      target: the attack's target class; poisons come from every other class.
      rate: poisons as a fraction of the training set.
      config: a :class:`FUSConfig` (default: ``FUSConfig()``).
      seed: seeds the initial draw, the refills, tie-breaking and each round's proxy.
      progress: show a progress bar over rounds.

    Returns:
      A :class:`Selection`; ``scores`` are the last round's forgetting events of the kept
      indices and ``NaN`` for the final refill. ``info["rounds"]`` holds one record per round
      (``seconds``, ``mean_events``, ``max_events``, ``events_histogram``, ``kept_by_tie_break``,
      ``final_asr_on_poisons``, ``kept``, ``refilled``); ``info["initial"]`` is the random
      starting set. ``info["events"]`` describes the final set: ``candidates`` (histogram of
      the last round's ``k`` candidates, see :func:`event_histogram`), ``selected`` (histogram
      of the kept ones), ``refilled`` (the final random draw, which has no events),
      ``max_possible`` (``epochs // 2``) and ``kept_by_tie_break``. ``info["refilled_share"]``
      is the share of the final set drawn at random after the last round.
    """
    config = FUSConfig() if config is None else config
    start = time.perf_counter()
    pool, k = poison_budget(dataset, target, rate)
    rng = np.random.default_rng([seed, 0xF05])
    current = rng.choice(pool, k, replace=False)
    initial = np.sort(current)
    size = len(dataset) + (k if config.mode == "append" else 0)
    trainer = ProxyTrainer(config.model, config.model_kwargs, dataset, epochs=config.epochs,
                           learning_rate=config.learning_rate, batch_size=config.batch_size,
                           num_examples=size)  # fmt: skip
    n_keep = int(k * config.keep_fraction)
    rounds, kept_scores, events, kept_events = [], np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    bar = progress_bar(range(config.rounds), desc="FUS rounds", disable=not progress)
    for r in bar:
        t0 = time.perf_counter()
        poisoned = poison_dataset(dataset, trigger, PoisonConfig(target=target, indices=tuple(current.tolist()),
                                                                 mode=config.mode))  # fmt: skip
        copies = poisoned.dataset.subset(poisoned.poison_indices)
        record: list[np.ndarray] = []

        def on_epoch(epoch, model, copies=copies, record=record):
            logits = forward(model, copies)
            record.append(logits.argmax(-1) == target)

        trainer.fit(poisoned.dataset, round_seed(seed, r), on_epoch=on_epoch, progress=progress, desc="FUS proxy")
        events = count_forgetting_events(np.stack(record))
        # Descending by events, ties in random order: shuffle, then a stable sort.
        shuffle = rng.permutation(k)
        order = shuffle[np.argsort(-events[shuffle], kind="stable")][:n_keep]
        kept, kept_events = poisoned.source_indices[order], events[order]
        kept_scores = kept_events.astype(np.float64)
        refill = rng.choice(np.setdiff1d(pool, kept), k - n_keep, replace=False)
        current = np.concatenate([kept, refill])
        rounds.append({
            "round": r + 1,
            "seconds": time.perf_counter() - t0,
            "mean_events": float(events.mean()),
            "max_events": int(events.max()),
            "events_histogram": event_histogram(events),
            "kept_by_tie_break": _kept_by_tie_break(events, kept_events),
            "final_asr_on_poisons": float(record[-1].mean()),
            "kept": int(n_keep),
            "refilled": int(k - n_keep),
        })  # fmt: skip
        bar.set_postfix(events=f"{events.mean():.2f}")
    scores = np.concatenate([kept_scores, np.full(k - n_keep, np.nan)])
    info = {
        "method": "fus",
        "k": k,
        "pool": int(pool.size),
        "seed": seed,
        "config": dataclasses.asdict(config),
        "initial": initial,
        "rounds": rounds,
        "events": {
            "candidates": event_histogram(events),
            "selected": event_histogram(kept_events),
            "refilled": int(k - n_keep),
            "max_possible": config.epochs // 2,
            "kept_by_tie_break": _kept_by_tie_break(events, kept_events),
        },
        "refilled_share": (k - n_keep) / k,
        "seconds": time.perf_counter() - start,
    }
    return finish(current, scores, info)
