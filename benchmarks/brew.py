"""Witches' Brew on Fashion-MNIST: a fresh victim against the white-box upper bound.

For each of ``--targets`` target test images (drawn at random among those the clean model
classifies correctly; intended class drawn at random among the other classes), poisons
are ``--rate`` of the training set drawn from the intended class (1 % of the 57,000
images left after the 5 % validation split: 570) and brewed with ε = 16/255 against the
clean CNN (Adam 1e-3, 5 epochs, the last at lr/10: the fmnist presets' victim). Success is
judged twice, by retraining on the poisoned set

* ``fresh``: from a new initialisation and a new batch order (the reference's validation),
* ``whitebox``: from the *same* initialisation and batch order as the clean model the
  poisons were brewed against. This is the attack's upper bound: if it fails here, at a
  high gradient alignment, the defect is in the attack's implementation; if it succeeds
  here but not on fresh victims, the threat model is the hard part.

Per target the JSON records the alignment before and after brewing (per restart), the
brewing seconds (for the first target of a process they include compiling the step),
and each retrained model's target prediction, probability of the intended class and
clean test accuracy. The file is rewritten after every target, and a run started again
with the same arguments skips the targets it already holds and reuses the clean model it
kept beside the JSON (``OUT.clean``, verified against the settings and the model's shape).

Usage:
  python benchmarks/brew.py --out runs/brew_fmnist.json                     # the reference: 250 steps × 8 restarts
  python benchmarks/brew.py --steps 100 --restarts 2 --out runs/brew_fmnist_100x2.json
  python benchmarks/brew.py --dataset digits --steps 20 --restarts 2 --targets 5 --out /tmp/brew.json   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from jaxpoison.attacks import BrewConfig, apply_brew, brew_poisons
from jaxpoison.attacks.witches_brew import gradient_alignment
from jaxpoison.data import Dataset
from jaxpoison.experiments.config import DataConfig
from jaxpoison.experiments.presets import CNN_ADAM
from jaxpoison.experiments.victim import init_model, load_data
from jaxpoison.models import FunctionalModel
from jaxpoison.runinfo import environment
from jaxpoison.training import predict_logits, train
from jaxpoison.training.checkpoint import CheckpointError, load_tree, save_tree


def victim_config(dataset: str, epochs: int | None):
    """The fmnist presets' CNN victim (Adam 1e-3, the last epoch at lr/10); digits: 10 epochs, batch 32."""
    recipe = CNN_ADAM.recipe if dataset == "fashion_mnist" else CNN_ADAM.recipe.replace(epochs=10, batch_size=32)
    epochs = epochs or recipe.epochs
    return dataclasses.replace(CNN_ADAM, recipe=recipe.replace(epochs=epochs, milestones=(epochs - 1,) if epochs > 1
                                                                else ()))  # fmt: skip


def same_settings(stored: dict | None, settings: dict) -> bool:
    """``stored`` describes the run of ``settings``; a victim stored in the older flat layout
    (model and recipe fields side by side) matches when every field it names is equal."""
    if stored is None or stored.keys() != settings.keys():
        return False
    victim, flat = settings["victim"], stored["victim"]
    if "recipe" not in flat:  # the older layout
        merged = {"model": victim["model"], **victim["recipe"]}
        if any(merged.get(k, object()) != v for k, v in flat.items()):
            return False
        stored = {**stored, "victim": victim}
    return stored == settings


def fit(config, dataset: Dataset, seed: int) -> tuple[FunctionalModel, float]:
    """Initialise with ``seed`` and train with ``seed`` (batch order); returns the model and seconds."""
    t0 = time.perf_counter()
    model = init_model(config, dataset, seed)
    result = train(model, dataset, config.recipe, seed=seed, progress=False)
    return result.model, time.perf_counter() - t0


def clean_model(config, dataset: Dataset, seed: int, out: Path, settings: dict) -> tuple[FunctionalModel, float]:
    """The clean model the poisons are brewed against, trained once and kept beside ``out``.

    Training is deterministic, so a kept model is the one a rerun would train; it is reused
    only when its record names these settings and the arrays read back into the model's shape.
    """
    arrays, record = out.with_suffix(".clean"), out.with_suffix(".clean.json")
    template = init_model(config, dataset, seed)
    if record.exists() and same_settings(json.loads(record.read_text()).get("settings"), settings):
        try:
            model = load_tree(arrays, template, what="kept clean model")
            print(f"clean model: reusing {arrays}")
            return model, json.loads(record.read_text())["seconds"]
        except CheckpointError as e:
            print(f"clean model: {e} Training it again.")
    model, seconds = fit(config, dataset, seed)
    record.unlink(missing_ok=True)  # no record names the arrays while they are being replaced
    save_tree(arrays, model)
    write(record, {"settings": settings, "seconds": seconds})  # last: the arrays are complete when it exists
    return model, seconds


def judge(model: FunctionalModel, test_set: Dataset, target: int, intended: int) -> dict:
    """The target's prediction and softmax probability of the intended class, and clean test accuracy."""
    logits = predict_logits(model, test_set)
    probs = np.asarray(jax.nn.softmax(logits[target]))
    return {"prediction": int(np.argmax(logits[target])), "p_intended": float(probs[intended]),
            "clean_accuracy": float(np.mean(logits.argmax(-1) == test_set.labels))}  # fmt: skip


def draw_target(t: int, seed: int, clean_predictions: np.ndarray, test_set: Dataset, train_set: Dataset, budget: int):
    """Target ``t``: a correctly classified test image, an intended class, the poisons (all from ``(seed, t)``)."""
    rng = np.random.default_rng([seed, t])
    correct = np.flatnonzero(clean_predictions == test_set.labels)
    target = int(rng.choice(correct))
    true_class = int(test_set.labels[target])
    intended = int(rng.choice([c for c in range(train_set.num_classes) if c != true_class]))
    pool = np.flatnonzero(train_set.labels == intended)
    if budget > pool.size:
        raise SystemExit(f"--rate asks for {budget} poisons but class {intended} has {pool.size} training images.")
    return target, true_class, intended, np.sort(rng.choice(pool, budget, replace=False))


def write(path: Path, payload: dict) -> None:
    """Atomically, so that a kill never leaves a half-written file to resume from."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def summarise(records: list[dict]) -> dict:
    n = len(records)
    return {
        "targets_done": n,
        "success_fresh": sum(r["success_fresh"] for r in records),
        "success_whitebox": sum(r["success_whitebox"] for r in records),
        "mean_alignment_before": float(np.mean([r["alignment_before"] for r in records])) if n else None,
        "mean_alignment": float(np.mean([r["alignment"] for r in records])) if n else None,
        "mean_brew_seconds": float(np.mean([r["brew_seconds"] for r in records])) if n else None,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--train-size", type=int, default=None, help="keep the first N training images (quick runs)")
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="poison share; default 0.01 (digits: 0.03)")
    parser.add_argument("--epsilon", type=float, default=16.0, help="ℓ∞ budget in /255 units")
    parser.add_argument("--epochs", type=int, default=None, help="victim epochs; default 5 (digits: 10)")
    parser.add_argument("--no-augment", action="store_true", help="brew without differentiable augmentation")
    parser.add_argument("--padding", type=int, default=None, help="brewing shift range; default image size / 8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="progress bars while brewing")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    small = args.dataset == "digits"
    rate = args.rate if args.rate is not None else (0.03 if small else 0.01)  # 1 % of ~1,400 digits is 14 poisons
    splits = load_data(DataConfig(args.dataset, train_size=args.train_size), args.seed)
    train_set, test_set = splits.train, splits.test
    victim = victim_config(args.dataset, args.epochs)
    budget = max(1, round(rate * len(train_set)))
    brew_config = BrewConfig(epsilon=args.epsilon / 255, steps=args.steps, restarts=args.restarts,
                             augment=not args.no_augment, seed=args.seed,
                             padding=args.padding or max(1, train_set.image_shape[0] // 8))  # fmt: skip
    settings = {"dataset": args.dataset, "train_size": len(train_set), "rate": rate, "poisons": budget,
                "seed": args.seed, "victim": dataclasses.asdict(victim),
                "brew": dataclasses.asdict(brew_config)}  # fmt: skip
    settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)

    out = Path(args.out)
    records: list[dict] = []
    written = settings
    if out.exists():
        previous = json.loads(out.read_text())
        if not same_settings(previous.get("settings"), settings):
            raise SystemExit(f"{out} holds a run with other settings; pass another --out to start afresh.")
        records, written = previous["targets"], previous["settings"]  # rewritten in the layout it was written in
        print(f"resuming: {len(records)} of {args.targets} targets already in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)

    clean, clean_seconds = clean_model(victim, train_set, args.seed, out, settings)
    clean_logits = predict_logits(clean, test_set)
    clean_predictions = clean_logits.argmax(-1)
    clean_info = {"accuracy": float(np.mean(clean_predictions == test_set.labels)), "seconds": clean_seconds}
    print(f"clean model: accuracy {clean_info['accuracy']:.4f} ({clean_seconds:.0f} s)")

    def payload():
        return {"settings": written, "clean": clean_info, "targets": records, "summary": summarise(records),
                "environment": environment()}  # fmt: skip

    done = {r["index"] for r in records}
    for t in range(args.targets):
        if t in done:
            continue
        target, true_class, intended, poisons = draw_target(t, args.seed, clean_predictions, test_set, train_set,
                                                            budget)  # fmt: skip
        image = test_set.images[target]
        before = gradient_alignment(clean, train_set, poisons, 0.0, image, intended, brew_config.batch_size)
        t0 = time.perf_counter()
        brew = brew_poisons(clean, train_set, poisons, image, intended, brew_config, progress=args.progress)
        brew_seconds = time.perf_counter() - t0
        poisoned = apply_brew(train_set, poisons, brew)
        fresh_seed = args.seed + 1 + t
        fresh, fresh_seconds = fit(victim, poisoned, fresh_seed)
        whitebox, whitebox_seconds = fit(victim, poisoned, args.seed)
        fresh_result = {"seed": fresh_seed, "seconds": fresh_seconds, **judge(fresh, test_set, target, intended)}
        whitebox_result = {"seed": args.seed, "seconds": whitebox_seconds,
                           **judge(whitebox, test_set, target, intended)}  # fmt: skip
        record = {
            "index": t,
            "target": target,
            "true_class": true_class,
            "intended": intended,
            "poisons": int(poisons.size),
            "clean_p_intended": float(jax.nn.softmax(clean_logits[target])[intended]),
            "alignment_before": before,
            "alignments": [float(a) for a in brew.alignments],
            "best_restart": brew.best_restart,
            "alignment": float(brew.alignments[brew.best_restart]),
            "final_losses": [float(x) for x in brew.losses[:, -1]],
            "brew_seconds": brew_seconds,
            "seconds_per_step": brew_seconds / (brew_config.steps * brew_config.restarts),
            "fresh": fresh_result,
            "whitebox": whitebox_result,
            "success_fresh": fresh_result["prediction"] == intended,
            "success_whitebox": whitebox_result["prediction"] == intended,
        }
        records.append(record)
        records.sort(key=lambda r: r["index"])
        write(out, payload())
        print(f"target {t}: test image {target} ({true_class} -> {intended}), alignment {before:.3f} -> "
              f"{record['alignment']:.3f}, brew {brew_seconds:.0f} s; fresh predicts {fresh_result['prediction']} "
              f"(p {fresh_result['p_intended']:.3f}), white-box predicts {whitebox_result['prediction']} "
              f"(p {whitebox_result['p_intended']:.3f})", flush=True)  # fmt: skip
    result = payload()
    write(out, result)
    s = result["summary"]
    print(f"success: fresh {s['success_fresh']}/{s['targets_done']}, white-box {s['success_whitebox']}/"
          f"{s['targets_done']}; mean alignment {s['mean_alignment_before']} -> {s['mean_alignment']}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
