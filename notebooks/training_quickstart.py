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
# # jaxpoison quickstart: data, a model, training
#
# This notebook loads a dataset with `jaxpoison.data`, builds a Flax NNX model, turns it into
# a pytree model with `to_functional`, trains it with the sharded train loop and evaluates it.
# On Colab, install the package first (`pip install -e .` from a clone of this repository).
#
# The parameters cell below uses tiny defaults so the notebook runs in seconds; set
# `DATASET = "fashion_mnist"` and `EPOCHS = 5` for the real thing (about 0.91 test accuracy).

# %% tags=["parameters"]
DATASET = "digits"
MODEL = "cnn"
EPOCHS = 4
BATCH_SIZE = 32

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxpoison.data import dataset_location, dataset_names, load_splits
from jaxpoison.models import count_params, create_model, to_functional
from jaxpoison.training import adam_recipe, evaluate, train

print("devices:", jax.devices())
for name in dataset_names():
    print(f"{name:14s}", dataset_location(name) or "-")

# %% [markdown]
# ## Data
# Images are float32 NHWC in [0, 1]; normalisation constants travel with the dataset and are
# handed to the model, which normalises its own inputs.

# %%
train_set, test_set = load_splits(DATASET)
print(train_set, test_set, sep="\n")
fig, axes = plt.subplots(2, 8, figsize=(10, 3))
for ax, image, label in zip(axes.flat, train_set.images, train_set.labels, strict=False):
    ax.imshow(image.squeeze(), cmap="gray")
    ax.set_title(train_set.class_names[label], fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Model and training

# %%
module = create_model(MODEL, train_set.image_shape, train_set.num_classes, seed=0)
model = to_functional(module, train_set.mean, train_set.std)  # model(x) takes pixel-space images
print(f"{MODEL}: {count_params(model.params):,} parameters")
result = train(model, train_set, adam_recipe(epochs=EPOCHS, batch_size=BATCH_SIZE), eval_dataset=test_set)
for record in result.history:
    print(record)

# %%
test = evaluate(result.model, test_set)
print(f"test accuracy: {test.accuracy:.4f}")
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(np.arange(1, len(result.step_losses) + 1), result.step_losses)
ax.set_xlabel("step")
ax.set_ylabel("training loss")
plt.show()
assert test.accuracy > 0.5, "training failed to learn"
