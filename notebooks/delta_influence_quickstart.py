# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Δ-Influence quickstart: poison, detect, unlearn
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/)
# *(Colab: upload this notebook, then install jaxpoison in the first cell — `pip install -e .` from a clone.)*
#
# A backdoored model sends triggered images to the attack's target class because a few
# poisoned training points support that prediction. **Δ-Influence** starts from one such
# poisoned test image: it transforms it and flips its label 50 times and watches the
# influence of every training point. The poisons' support *collapses* under every
# modification; clean points' influence moves both ways. Flag the collapsed points, unlearn
# them, and the backdoor is gone.
#
# The parameters cell uses the tiny `digits-badnet-tiny` preset (about a minute on a laptop
# CPU). Set `PRESET = "fmnist-badnet-demo"` (needs Fashion-MNIST) for the real thing.

# %% tags=["parameters"]
PRESET = "digits-badnet-tiny"
OUT = "runs/notebook"
OVERRIDES: list[str] = []

# %%
import matplotlib.pyplot as plt
import numpy as np

from jaxpoison.detection import DeltaConfig, delta_influence, detection_metrics
from jaxpoison.experiments import apply_overrides, get_preset, prepare, run_pipeline

config = apply_overrides(get_preset(PRESET), OVERRIDES)
print(config.attack)

# %% [markdown]
# ## 1. Poison, train the victim, find a poisoned test point
#
# `prepare` runs the attack half of a run as resumable stages: the clean model, the
# poisoned training set, the victim, the first triggered test image it assigns to the
# target, and the EK-FAC factors Δ-Influence needs.

# %%
run = prepare(config, OUT, force=True, progress=False)
print("victim:", run.victim_record)
poisons = run.poisoning.poison_indices
print(f"{poisons.size} poisons among {len(run.poisoning.dataset)} training images")

fig, axes = plt.subplots(1, 2, figsize=(4, 2))
axes[0].imshow(run.poisoning.dataset.images[poisons[0]].squeeze(), cmap="gray")
axes[0].set_title("a poison")
axes[1].imshow(run.victim.test_images[0].squeeze(), cmap="gray")
axes[1].set_title(f"test point → {run.victim.target}")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 2. Δ-Influence by hand
#
# All 1 + 50 queries (the test point and its modified copies) are scored in one pass over
# the training set. `delta[k, n]` is the change of training point `n`'s influence under
# modification `k`.

# %%
result = delta_influence(run.victim.model, run.victim.train, run.victim.test_images, run.victim.target,
                         run.factors, DeltaConfig(n_b=50, tau=0.0, n_tol=1),
                         config.detection.scores, progress=False)  # fmt: skip
metrics = detection_metrics(result.flagged, poisons, len(run.victim.train), result.scores)
print({k: metrics[k] for k in ("tpr", "precision", "auroc", "n_flagged")})
print("seconds:", {k: round(v, 2) for k, v in result.seconds.items()})

# %%
is_poison = np.zeros(len(run.victim.train), bool)
is_poison[poisons] = True
counts = result.counts[0]
plt.figure(figsize=(5, 3))
plt.hist([counts[~is_poison], counts[is_poison]], bins=np.arange(52), label=["clean", "poisons"], log=True)
plt.axvline(50 - 1 - 0.5, color="k", ls="--", label="flag threshold")
plt.xlabel("modifications under which influence dropped")
plt.legend()
plt.show()

# %% [markdown]
# ## 3. The whole run: detectors side by side, then unlearning
#
# `run_pipeline` reuses every stage above and adds the baselines and the unlearning
# methods (here exact unlearning and continued training), then writes `report.md`.

# %%
report = run_pipeline(config, OUT, force=True, progress=False)
print(open(f"{OUT}/report.md").read())
