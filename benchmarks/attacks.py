"""Train the CNN under each attack and record attack success and clean accuracy.

Attacks: BadNet (the 4-pixel pattern, black on colour images as in the reference and white
on grayscale ones, whose black background hides black pixels; on 8×8 digits a 2×2 white
corner square), blended at ε ∈ {0.05, 0.1, 0.2} (the generated default
pattern), the smooth low-frequency trigger (generated against a clean model), and
Witches' Brew (clean-label, one random target test image per run, success judged by
retraining from scratch). Dirty-label attacks are all-to-one toward ``--target`` at
``--rate`` (replace mode).

Usage:
  python benchmarks/attacks.py --dataset fashion_mnist --out runs/attacks.json
  python benchmarks/attacks.py --dataset digits --out /tmp/attacks.json   # quick run of the same code path
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxpoison.attacks import (
    BrewConfig,
    PoisonConfig,
    apply_brew,
    attack_metrics,
    badnet_pixels,
    blended,
    brew_poisons,
    make_smooth_trigger,
    poison_dataset,
    square_patch,
)
from jaxpoison.data import load_splits
from jaxpoison.models import create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.training import adam_recipe, evaluate, train


def fit(data, recipe, seed):
    """A fresh CNN (normalising with ``data``'s constants) trained on ``data``; returns the trained model."""
    model = to_functional(create_model("cnn", data.image_shape, data.num_classes, seed=seed), data.mean, data.std)
    return train(model, data, recipe, seed=seed, progress=False).model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--epochs", type=int, default=None, help="default: 5 (fashion_mnist), 10 (digits)")
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--brew-targets", type=int, default=5)
    parser.add_argument("--brew-steps", type=int, default=100)
    parser.add_argument("--only", default=None, help="comma-separated subset, e.g. badnet,blended_0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    train_set, test_set = load_splits(args.dataset)
    small = args.dataset == "digits"
    recipe = adam_recipe(epochs=args.epochs or (10 if small else 5), batch_size=32 if small else 128)
    rate = max(args.rate, 0.03) if small else args.rate  # 1 % of 1437 digits is too few to learn from

    t0 = time.perf_counter()
    clean = fit(train_set, recipe, args.seed)
    clean_accuracy = evaluate(clean, test_set).accuracy
    results = {"clean": {"clean_accuracy": clean_accuracy, "seconds": time.perf_counter() - t0}}

    triggers = {"badnet": square_patch(train_set.image_shape, 2, (1.0,), margin=0) if small
                else badnet_pixels(train_set.image_shape, value=1.0 if train_set.image_shape[-1] == 1 else 0.0)}
    for eps in (0.05, 0.1, 0.2):
        triggers[f"blended_{eps}"] = blended(train_set.image_shape, eps)
    fit_pool = train_set.images[train_set.labels != args.target][:100]
    if args.only is None or "smooth" in args.only.split(","):
        triggers["smooth"] = make_smooth_trigger(clean, fit_pool, args.target, progress=False)
    if args.only is not None:
        triggers = {k: v for k, v in triggers.items() if k in args.only.split(",")}

    for name, trigger in triggers.items():
        t0 = time.perf_counter()
        poisoned = poison_dataset(train_set, trigger, PoisonConfig(target=args.target, rate=rate, seed=args.seed))
        model = fit(poisoned.dataset, recipe, args.seed)
        metrics = attack_metrics(model, test_set, trigger, args.target)
        results[name] = {
            "asr": metrics["asr"],
            "clean_accuracy": metrics["clean_accuracy"],
            "clean_accuracy_unpoisoned": clean_accuracy,
            "class_asr_variance": metrics["class_asr_variance"],
            "poison_count": int(poisoned.poison_indices.size),
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name:14s} ASR {metrics['asr']:.3f}  clean {metrics['clean_accuracy']:.4f}")

    rng = np.random.default_rng(args.seed)
    successes, t0 = 0, time.perf_counter()
    budget = max(1, round(rate * len(train_set)))
    for run in range(args.brew_targets):
        target_idx = int(rng.integers(len(test_set)))
        true_class = int(test_set.labels[target_idx])
        intended = int(rng.choice([c for c in range(train_set.num_classes) if c != true_class]))
        poisons = np.flatnonzero(train_set.labels == intended)[:budget]
        config = BrewConfig(steps=args.brew_steps, restarts=2, padding=2, seed=args.seed + run)
        brew = brew_poisons(clean, train_set, poisons, test_set.images[target_idx], intended, config, progress=False)
        model = fit(apply_brew(train_set, poisons, brew), recipe, args.seed + 1)  # a fresh victim
        target_only = test_set.subset([target_idx])
        predicted = int(evaluate(model, target_only).predictions[0])
        successes += int(predicted == intended)
    results["witches_brew"] = {
        "successes": successes,
        "targets": args.brew_targets,
        "asr": successes / max(args.brew_targets, 1),
        "poison_count": budget,
        "seconds": time.perf_counter() - t0,
    }
    print(f"witches_brew   {successes}/{args.brew_targets} targets reached")
    out = {"dataset": args.dataset, "target": args.target, "rate": rate, "epochs": recipe.epochs,
           "attacks": results, "environment": environment()}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
