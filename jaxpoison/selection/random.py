"""RS: random selection, the baseline every other method is compared with."""

from __future__ import annotations

import time

import numpy as np

from jaxpoison.data import Dataset
from jaxpoison.selection.common import Selection, finish, poison_budget


def random_selection(dataset: Dataset, target: int, rate: float, seed: int = 0) -> Selection:
    """``round(rate · N)`` indices drawn uniformly without replacement from the non-target pool.

    The same draw as :func:`jaxpoison.attacks.choose_poisons` with ``rate`` and ``seed``, so
    RS here and a randomly poisoned set built by ``poison_dataset`` agree. ``scores`` are
    ``NaN`` (RS scores nothing).

    Raises:
      SelectionError: unknown target, or a rate selecting no poison or more than the pool.
    """
    start = time.perf_counter()
    pool, k = poison_budget(dataset, target, rate)
    chosen = np.random.default_rng(seed).choice(pool, k, replace=False)
    info = {"method": "rs", "k": k, "pool": int(pool.size), "seed": seed, "seconds": time.perf_counter() - start}
    return finish(chosen, np.full(k, np.nan), info)
