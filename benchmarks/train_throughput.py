"""Training throughput (images/second) of the jitted, sharded train step.

Measures steady-state throughput: one warm-up step compiles, then ``--steps`` steps
are timed with ``block_until_ready``. Two workloads:

* the CNN on Fashion-MNIST (``--dataset digits`` for a seconds-long smoke run);
* ResNet-18 on CIFAR-shaped synthetic data (32×32×3, 10 classes) for a small
  number of steps, with the reference recipe (SGD, augmentation, BatchNorm).

Usage:
  python benchmarks/train_throughput.py --out runs/train_throughput.json
  python benchmarks/train_throughput.py --dataset digits --resnet-steps 2 --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxpoison.data import Dataset, load_dataset, synthetic_dataset
from jaxpoison.models import count_params, create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.sharding import data_mesh, replicate, shard_batch
from jaxpoison.training import TrainRecipe, adam_recipe, reference_recipe, train_step


def measure(model_name: str, data: Dataset, recipe: TrainRecipe, steps: int, **model_kw) -> dict:
    """Images/second of ``steps`` train steps after one compiling warm-up step."""
    mesh = data_mesh()
    model = to_functional(create_model(model_name, data.image_shape, data.num_classes, **model_kw), data.mean, data.std)
    steps_per_epoch = max(1, len(data) // recipe.batch_size)
    optimizer = recipe.optimizer_for(steps_per_epoch)
    # replicate never aliases its input: the step donates the replicated model and optimiser state
    replicated = replicate(mesh, model)
    opt_state = replicate(mesh, optimizer.init(replicated.params))
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(data), recipe.batch_size, replace=False) for _ in range(steps + 1)]

    def run(i, carry):
        x, y = shard_batch(mesh, data.images[batches[i]], data.labels[batches[i]])
        return train_step(*carry, jax.random.key(i), x, y, recipe=recipe, steps_per_epoch=steps_per_epoch)[:2]

    t0 = time.perf_counter()
    carry = jax.block_until_ready(run(0, (replicated, opt_state)))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        carry = run(i, carry)
    jax.block_until_ready(carry)
    seconds = time.perf_counter() - t0
    ips = steps * recipe.batch_size / seconds
    return {
        "model": model_name,
        "num_params": count_params(model.params),
        "batch_size": recipe.batch_size,
        "steps": steps,
        "images_per_second": ips,
        "seconds": seconds,
        "first_step_seconds_incl_compile": compile_s,
        "epoch_seconds_estimate": len(data) / ips,
        "train_images": len(data),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--cnn-steps", type=int, default=100)
    parser.add_argument("--resnet-steps", type=int, default=5)
    parser.add_argument("--resnet-batch", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    data = load_dataset(args.dataset, "train")
    cnn_batch = 128 if len(data) >= 128 * 4 else 32
    results = {
        "cnn": {"dataset": args.dataset, **measure("cnn", data, adam_recipe(batch_size=cnn_batch), args.cnn_steps)},
        "environment": environment(),
    }
    if args.resnet_steps > 0:
        recipe = reference_recipe().replace(batch_size=args.resnet_batch)
        results["resnet18"] = {
            "dataset": "synthetic cifar-shaped",
            **measure("resnet18", synthetic_dataset(args.resnet_batch * 8), recipe, args.resnet_steps),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for name in ("cnn", "resnet18"):
        if name in results:
            r = results[name]
            print(f"{name:9s} {r['images_per_second']:10.1f} images/s  (batch {r['batch_size']}, {r['steps']} steps)")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
