"""Backdoor sample selection: which training samples to poison.

Every method picks ``k = round(rate · N)`` indices from the non-target pool for a
dirty-label, all-to-one backdoor with a given trigger, and returns a :class:`Selection`
(sorted unique ``indices``, their ``scores``, and an ``info`` record). All are
deterministic per seed.

* **RS** (:func:`random_selection`) — uniform at random; the baseline.
* **FUS** (:func:`fus_selection`, Xia et al. 2022) — rounds of proxy training; keep the
  poisons with the most forgetting events (target prediction flipping 1 → 0 between
  epochs), refill the rest at random.
* **RD** (:func:`rd_selection`, Wu et al. 2023) — greedy rounds; drop the poisons a briefly
  trained score model already fits (lowest ``‖softmax(f(x̃)) − onehot(target)‖₂``), refill
  at random, with a decaying drop ratio.
* **HFE** (:func:`hfe_selection`) — model-free: the candidates whose triggered image has the
  largest share of DCT energy outside a low-frequency radius (jaxpoison's definition; no
  public one exists); ``hfe_asc`` (a :data:`VARIANTS` name) takes the smallest share instead.
* **IFS** (:func:`ifs_selection`, Wei et al. 2025) — a surrogate trained on random poisons;
  prune each class to the samples nearest its feature prototype (group 1 of η); score them
  by their poisoned version's influence on the attack-success loss (one LiSSA inverse-HVP,
  one batched scoring pass); take an equal quota of the most influential per class.

Retraining a victim on a selection is left to the caller
(``jaxpoison.attacks.poison_dataset`` with ``PoisonConfig(indices=...)``).
"""

from jaxpoison.data.dct import dct_matrix
from jaxpoison.selection.common import ProxyTrainer, Selection, SelectionError, poison_budget, triggered
from jaxpoison.selection.forgetting import FUSConfig, count_forgetting_events, event_histogram, fus_selection
from jaxpoison.selection.frequency import HFEConfig, hfe_ranking, hfe_scores, hfe_selection, high_frequency_mask
from jaxpoison.selection.ifs import (
    IFSConfig,
    candidate_influence,
    class_prototypes,
    fair_quota,
    fair_select,
    group1_size,
    group_split,
    ifs_selection,
    lissa_inverse_hvp,
    mean_loss_gradient,
)
from jaxpoison.selection.random import random_selection
from jaxpoison.selection.registry import SELECTION_NAMES, SELECTORS, VARIANTS, select_poisons
from jaxpoison.selection.representation import (
    RDConfig,
    final_refill,
    rd_scores,
    rd_selection,
    representation_distance,
)

__all__ = [
    "SELECTION_NAMES",
    "SELECTORS",
    "VARIANTS",
    "FUSConfig",
    "HFEConfig",
    "IFSConfig",
    "ProxyTrainer",
    "RDConfig",
    "Selection",
    "SelectionError",
    "candidate_influence",
    "class_prototypes",
    "count_forgetting_events",
    "dct_matrix",
    "event_histogram",
    "fair_quota",
    "fair_select",
    "final_refill",
    "fus_selection",
    "group1_size",
    "group_split",
    "hfe_ranking",
    "hfe_scores",
    "hfe_selection",
    "high_frequency_mask",
    "ifs_selection",
    "lissa_inverse_hvp",
    "mean_loss_gradient",
    "poison_budget",
    "random_selection",
    "rd_scores",
    "rd_selection",
    "representation_distance",
    "select_poisons",
    "triggered",
]
