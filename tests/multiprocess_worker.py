"""One process of a multi-process jaxpoison run (spawned by tests/test_multiprocess.py).

Usage: python -m tests.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT OUT.npz

Trains a small CNN on a poisoned digits set, fits EK-FAC factors, scores five queries and
runs Δ-Influence, every pass sharded over the processes' devices; process 0 writes the
results. With one process it is the single-process reference.
"""

from __future__ import annotations

import sys

import jax
import numpy as np


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    from jaxpoison.distributed import initialize

    if num_processes > 1:
        initialize(f"127.0.0.1:{port}", num_processes, process_id)
    from jaxpoison.attacks import PoisonConfig, badnet_pixels, poison_dataset
    from jaxpoison.data import load_dataset
    from jaxpoison.detection import DeltaConfig, delta_influence
    from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.training import TrainRecipe, train

    clean, test = load_dataset("digits", "train").first(256), load_dataset("digits", "test")
    trigger = badnet_pixels(clean.image_shape)
    poisoned = poison_dataset(clean, trigger, PoisonConfig(target=0, rate=0.05, seed=0)).dataset
    model = to_functional(create_model("cnn", clean.image_shape, clean.num_classes, seed=0), clean.mean, clean.std)
    trained = train(model, poisoned, TrainRecipe(epochs=2, batch_size=32), seed=0, progress=False)
    factors = fit_factors(trained.model, poisoned, FactorConfig(fisher="true", batch_size=32), progress=False)
    config = ScoreConfig(batch_size=32)
    scores = pairwise_scores(trained.model, poisoned, test.images[:5], test.labels[:5], factors, config,
                             progress=False)  # fmt: skip
    point = np.clip(trigger.apply(test.images[test.labels != 0][:1]), 0.0, 1.0)
    with np.errstate(all="ignore"):
        import warnings

        warnings.simplefilter("ignore")  # the two-epoch backdoor need not fire; equality is what is tested
        delta = delta_influence(trained.model, poisoned, point, 0, factors, DeltaConfig(n_b=10), config,
                                progress=False)  # fmt: skip
    if jax.process_index() == 0:
        eigenvalues = {f"eig_{name}": np.asarray(block["eigenvalues"]) for name, block in factors.blocks.items()}
        np.savez(out, losses=np.asarray(trained.step_losses), scores=scores.values, flagged=delta.flagged,
                 devices=jax.device_count(), **eigenvalues)  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
