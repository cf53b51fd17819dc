"""The ``jaxpoison`` command line: thin wrappers that parse flags and call the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxpoison.data import DatasetError, dataset_location, dataset_names, get_spec
from jaxpoison.models import MODEL_NAMES
from jaxpoison.training import CheckpointError


def _cmd_datasets(args) -> int:
    print(f"{'dataset':<14} {'image':<12} {'classes':>7}  where")
    for name in dataset_names():
        spec = get_spec(name)
        if name == "npz":
            where = "your own arrays: --dataset npz --data-path FILE.npz"
            shape, classes = "any", "any"
        else:
            where = dataset_location(name) or "not available (run `jaxpoison datasets --how NAME`)"
            shape, classes = "x".join(map(str, spec.image_shape)), str(len(spec.class_names))
        print(f"{name:<14} {shape:<12} {classes:>7}  {where}")
    if args.how:
        print(f"\nHow to get {args.how}:\n{get_spec(args.how).how_to_get}")
    return 0


def _recipe_from_args(args):
    from jaxpoison.experiments import default_recipe
    from jaxpoison.training import get_recipe

    recipe = get_recipe(args.recipe, args.epochs) if args.recipe else default_recipe(args.model, args.epochs)
    changes = {}
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.lr is not None:
        changes["learning_rate"] = args.lr
    return recipe.replace(**changes) if changes else recipe


def _dataset_options(args) -> dict:
    return {"path": args.data_path} if args.data_path else {}


def _print_metrics(metrics: dict, out: Path) -> None:
    per_epoch = metrics["seconds_per_epoch_after_first"] or metrics["seconds_per_epoch"]
    print(
        f"{metrics['model']} on {metrics['dataset']} ({metrics['train_data']['size']} training images, "
        f"{metrics['epochs']} epochs): test accuracy {metrics['test_accuracy']:.4f}, "
        f"{per_epoch:.1f} s/epoch, {metrics['train_seconds']:.1f} s training"
    )
    print(f"metrics: {out / 'metrics.json'}")


def _cmd_train(args) -> int:
    from jaxpoison.experiments import run_train_job

    out = Path(args.out)
    metrics = run_train_job(
        args.dataset,
        args.model,
        out,
        _recipe_from_args(args),
        seed=args.seed,
        devices=args.devices,
        progress=not args.no_progress,
        dataset_options=_dataset_options(args),
    )
    _print_metrics(metrics, out)
    return 0


def _cmd_demo(args) -> int:
    from jaxpoison.experiments import run_train_job
    from jaxpoison.training import adam_recipe

    dataset = "fashion_mnist" if dataset_location("fashion_mnist") else "digits"
    if dataset == "digits":
        print("Fashion-MNIST not found; using scikit-learn digits. " + get_spec("fashion_mnist").how_to_get)
    epochs = args.epochs or (3 if dataset == "fashion_mnist" else 15)
    batch = 128 if dataset == "fashion_mnist" else 32
    out = Path(args.out)
    print(f"Training the CNN on {dataset} for {epochs} epochs -> {out}")
    metrics = run_train_job(dataset, "cnn", out, adam_recipe(epochs=epochs, batch_size=batch), seed=args.seed)
    _print_metrics(metrics, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxpoison", description="Data-poisoning research with influence functions in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list known datasets and whether they are available here")
    p.add_argument("--how", choices=dataset_names(), help="also print how to get this dataset")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("train", help="train a model and write DIR/metrics.json")
    p.add_argument("--dataset", required=True, choices=dataset_names())
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics.json)")
    p.add_argument("--recipe", choices=("adam", "reference"), default=None,
                   help="default: adam for mlp/logreg/cnn, reference (SGD, 40 epochs) for resnet18/vgg16")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=None, help="devices to shard over (default: all)")
    p.add_argument("--data-path", default=None, help="file for --dataset npz")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="the README's main job (Fashion-MNIST, else digits)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, CheckpointError, ValueError) as e:
        print(f"jaxpoison: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
