"""The ``jaxpoison`` command line: thin wrappers that parse flags and call the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

from jaxpoison.data import dataset_location, dataset_names, get_spec
from jaxpoison.distributed import DistributedError, initialize, is_writer, lost_peer
from jaxpoison.errors import InputError, RecoveryWarning
from jaxpoison.experiments.registry import UNLEARNERS
from jaxpoison.fileio import atomic_write_text
from jaxpoison.models import MODEL_NAMES
from jaxpoison.selection.registry import SELECTION_NAMES
from jaxpoison.training.recipes import RECIPES


def _seed(text: str) -> int:
    """argparse type: seeds are non-negative integers (numpy's generators refuse the rest)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer; got {value}")
    return value


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


def _print_run(report: dict, out: Path) -> None:
    print((out / "report.md").read_text())
    print(f"Report: {out / 'report.md'} and {out / 'report.json'}; plots in {out / 'plots'}")


def _memory_budget(args) -> tuple[int | None, str]:
    """The budget a plan is checked against: ``--memory-budget`` GiB, else the device's, else (CPU) the host's."""
    from jaxpoison.experiments.plan import host_memory_bytes
    from jaxpoison.influence.plan import device_memory_bytes

    if args.memory_budget is not None:
        if not args.memory_budget > 0:
            raise InputError(f"--memory-budget is in GiB and must be positive; got {args.memory_budget}.")
        return int(args.memory_budget * 2**30), "--memory-budget"
    device = device_memory_bytes()
    return (device, "the device's memory") if device else (host_memory_bytes(), "this machine's memory")


def _cmd_plan(args) -> int:
    from jaxpoison.experiments import apply_overrides, get_preset
    from jaxpoison.experiments.plan import check_plan_fits, format_plan, plan_run, training_set_size

    config = apply_overrides(get_preset(args.preset), args.set)
    n_train = args.n_train if args.n_train is not None else training_set_size(config)
    budget, source = _memory_budget(args)
    if args.fit_batches:
        config = _fit_batches(config, (budget, source))
    plan = plan_run(config, n_train)
    print(f"{args.preset}: {config.data.name}, {n_train if n_train is not None else 'unknown (pass --n-train)'} "
          f"training images, budget {budget / 2**30:.1f} GiB ({source})\n")  # fmt: skip
    print(format_plan(plan, budget))
    try:
        check_plan_fits(config, budget, plan)
    except InputError as e:
        print(f"\n{e}", file=sys.stderr)
        return 1
    return 0


def _fit_batches(config, budget: tuple[int, str]):
    """``config`` with the batch sizes that would not fit the budget lowered, saying which."""
    from jaxpoison.experiments.plan import fit_batches

    config, overrides = fit_batches(config, budget[0])
    where = f"{budget[0] / 2**30:.1f} GiB ({budget[1]})"
    print(f"fitted to {where}: " + (" ".join(f"--set {o}" for o in overrides) if overrides else "every batch fits"))
    return config


def _cmd_run(args) -> int:
    from jaxpoison.experiments import apply_overrides, run_pipeline
    from jaxpoison.experiments.plan import check_plan_fits
    from jaxpoison.influence.plan import device_memory_bytes

    config = apply_overrides(_preset_or_config(args.preset), args.set)
    if args.dump_config is not None:
        return _dump_config(config, args.dump_config)
    if args.out is None:
        raise InputError("jaxpoison run needs --out DIR (the run directory), or --dump-config [FILE] to write the "
                         "configuration instead of running it.")  # fmt: skip
    if args.fit_batches:
        config = _fit_batches(config, _memory_budget(args))
    elif args.memory_budget is not None or device_memory_bytes():  # on CPU only when asked: host memory swaps
        check_plan_fits(config, _memory_budget(args)[0])
    out = Path(args.out)
    report = run_pipeline(config, out, force=args.force, progress=not args.no_progress and is_writer())
    if is_writer():  # one report on the console, from the process that wrote it
        _print_run(report, out)
    return 0


def _preset_or_config(name: str):
    """The run configuration ``jaxpoison run`` was given: a preset name, or a JSON file (a config or a run.json)."""
    from jaxpoison.experiments import PRESETS, get_preset, load_config

    if name in PRESETS:
        return get_preset(name)
    path = Path(name)
    if path.exists() or path.suffix == ".json":
        return load_config(path)
    raise InputError(f"unknown preset {name!r}, and no config file of that name; give a preset "
                     f"({', '.join(PRESETS)}), a run's run.json, or a file written by "
                     "`jaxpoison run PRESET --dump-config FILE`.")  # fmt: skip


def _dump_config(config, where: str) -> int:
    """Write ``config`` as JSON to the file ``where`` (``-``: standard output); the run does not start."""
    from jaxpoison.experiments import to_dict

    text = json.dumps(to_dict(config), indent=2) + "\n"
    if where == "-":
        sys.stdout.write(text)
        return 0
    path = Path(where)
    if path.is_dir():
        raise InputError(f"--dump-config {path} is a directory; give a file name such as {path / 'config.json'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    print(f"config written to {path}; run it with `jaxpoison run {path} --out DIR`")
    return 0


def _load_run(run: Path, extra_detectors: tuple[str, ...] = ()):
    """The configuration of an existing run directory, with ``extra_detectors`` added."""
    import dataclasses

    from jaxpoison.experiments import RunConfig, from_dict

    if not (run / "run.json").is_file():
        raise InputError(f"{run} is not a jaxpoison run directory (no run.json); create one with `jaxpoison run`.")
    saved = _read_json(run / "run.json")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise InputError(f"{run / 'run.json'} holds no run configuration; rerun `jaxpoison run` into {run}.")
    config = from_dict(RunConfig, saved["config"])
    methods = tuple(dict.fromkeys((*config.detection.methods, *extra_detectors)))
    return dataclasses.replace(config, detection=dataclasses.replace(config.detection, methods=methods))


def _cmd_detect(args) -> int:
    from jaxpoison.detection import mask_from_indices
    from jaxpoison.experiments import detect_stage, prepare
    from jaxpoison.experiments.detectors import LABELS
    from jaxpoison.experiments.plots import detection_plots
    from jaxpoison.experiments.report import detection_table

    names = args.method.split(",")
    methods = tuple(LABELS) if args.method == "all" else tuple(m.strip() for m in names if m.strip())
    if not methods:
        raise InputError(f"--method names no detector; choose from {', '.join(LABELS)} or 'all'.")
    unknown = [m for m in methods if m not in LABELS]
    if unknown:
        raise InputError(f"unknown detector(s) {unknown}; choose from {', '.join(LABELS)} or 'all'.")
    run = Path(args.run)
    config = _load_run(run, methods)
    # Adding detectors extends this run; every stage that did not change is reused.
    prepared = prepare(config, run, force=True, progress=not args.no_progress)
    with prepared.store:
        path = run / "detection.json"
        records = _read_json(path) if path.exists() else {}
        detections = {}
        for method in methods:
            records[method], detections[method] = detect_stage(prepared, method, progress=not args.no_progress)
        atomic_write_text(path, json.dumps(records, indent=2, default=float))
    mask = mask_from_indices(prepared.poisoning.poison_indices, len(prepared.poisoning.dataset))
    detection_plots(detections, mask, run / "plots", suffix="_detect")
    print(detection_table({m: records[m] for m in methods}, int(prepared.poisoning.poison_indices.size)))
    print(f"Wrote {path} and plots in {run / 'plots'}")
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e}); delete it to rebuild it from the run's stages.") from None


def _read_indices(path: Path) -> np.ndarray:
    """Training indices from a ``.npy`` or text file: whole numbers only; masks and empty files are refused."""
    if not path.is_file():
        raise InputError(f"flagged-index file {path} does not exist.")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            with warnings.catch_warnings():  # an empty file is refused below, in words
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as e:
        raise InputError(f"{path} is not a .npy array or a text file of numbers ({e}).") from None
    values = np.asarray(values)
    if values.dtype == bool:
        raise InputError(f"{path} holds a boolean mask, not indices; save np.flatnonzero(mask) instead.")
    if values.dtype.kind not in "iuf":
        raise InputError(f"{path} holds {values.dtype} values; it must hold integer training indices.")
    if values.ndim > 1:
        raise InputError(f"{path} holds a {values.ndim}-D array of shape {values.shape}; save a 1-D list of indices.")
    values = values.reshape(-1)
    if values.size == 0:
        raise InputError(f"{path} holds no indices; flag at least one training point to unlearn.")
    if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(f"{path} must hold integer training indices (found non-integer or non-finite values).")
    values = values.astype(np.int64)
    unique, counts = np.unique(values, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{path} repeats training indices (e.g. {unique[counts > 1][:5].tolist()}); list each "
                         "flagged point once.")  # fmt: skip
    return values


def _cmd_unlearn(args) -> int:
    from jaxpoison.experiments import prepare, unlearn_stage

    run = Path(args.run)
    config = _load_run(run)
    # Read the user's file before any work: a bad one must fail fast.
    flagged = _read_indices(Path(args.flagged)) if args.flagged else None
    prepared = prepare(config, run, force=True, progress=not args.no_progress)
    with prepared.store:
        if flagged is not None:
            detector = f"file:{Path(args.flagged).name}"
        else:
            if prepared.store.record(f"detect:{args.detector}") is None:  # never ran, or its files are damaged
                raise InputError(f"detector {args.detector!r} has no intact result in {run}; run "
                                 f"`jaxpoison detect --method {args.detector} --run {run}` first.")  # fmt: skip
            flagged = np.load(prepared.store.path(f"detect:{args.detector}") / "flagged.npy")
            detector = args.detector
        # Out-of-range indices are refused by the unlearning methods themselves (split_forget_retain).
        record = unlearn_stage(prepared, detector, args.method, flagged, progress=not args.no_progress)
    print(json.dumps({k: record[k] for k in ("detector", "unlearner", "psr", "clean_accuracy", "seconds")}, indent=2))
    return 0


def _select_trigger(args, train_set):
    """The trigger of ``jaxpoison select``: blended, an opaque-ish patch, or the patched attack of strength ε."""
    from jaxpoison.attacks import PatchTrigger, blended, parse_position, patched, point_patch, square_patch
    from jaxpoison.data.pointcloud import is_point_cloud

    shape = train_set.image_shape
    if args.attack == "patched":  # ε on the 0-255 scale (images) or the point cluster's strength (point clouds)
        if not 0.0 < args.epsilon <= 255.0:  # NaN fails this too
            raise InputError(f"--epsilon of the patched attack is an amplitude in (0, 255] on the 0-255 pixel scale "
                             f"(e.g. 2); got {args.epsilon}.")  # fmt: skip
        if is_point_cloud(train_set):
            return point_patch(args.epsilon)
        return patched(shape, args.epsilon, size=args.patch_size, position=parse_position(args.patch_position),
                       pattern=args.patch_pattern)
    if is_point_cloud(train_set):
        raise InputError(f"--attack {args.attack} is an image attack; point clouds take --attack patched.")
    if not 0.0 < args.epsilon <= 1.0:  # NaN fails this too
        raise InputError(f"--epsilon is a blend ratio or patch opacity in (0, 1]; got {args.epsilon}.")
    if args.attack == "blended":
        return blended(shape, args.epsilon)
    # a white (grayscale) or yellow (colour) corner square, blended in with opacity ε
    colour = (1.0,) if shape[-1] == 1 else (1.0, 1.0, 0.0)
    size = 3 if args.patch_size is None else args.patch_size
    square = square_patch(shape, size=size, color=colour)
    return PatchTrigger(square.mask * args.epsilon, square.pattern, name=f"patch{size}")


def _cmd_select(args) -> int:
    from jaxpoison.data import load_splits
    from jaxpoison.selection import select_poisons

    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        raise InputError(f"{out} already holds a selection; pass --force to overwrite it.")
    if not 0.0 < args.rate < 1.0:
        raise InputError(f"--rate is a share of the training set in (0, 1); got {args.rate}.")
    train_set, _ = load_splits(args.dataset, **_dataset_options(args))
    trigger = _select_trigger(args, train_set)
    chosen = select_poisons(args.method, train_set, trigger, args.target, args.rate, seed=args.seed,
                            progress=not args.no_progress)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "indices.npy", chosen.indices)
    manifest = {"method": args.method, "dataset": args.dataset, "attack": args.attack, "epsilon": args.epsilon,
                "rate": args.rate, "target": args.target, "seed": args.seed, "count": int(chosen.indices.size),
                "trigger": trigger.describe(), "data_hash": train_set.content_hash,
                "seconds": chosen.info.get("seconds")}  # fmt: skip
    # IFS: which images its attack-success loss used, and how well its LiSSA solve converged.
    manifest.update({key: chosen.info[key] for key in ("asr_set", "lissa") if key in chosen.info})
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=float))
    print(f"{chosen.indices.size} samples chosen by {args.method} -> {out / 'indices.npy'}")
    return 0


def _cmd_arena(args) -> int:
    from jaxpoison.experiments.arena import load_spec, run_arena

    spec = load_spec(args.spec)
    out = Path(args.out)
    run_arena(spec, out, progress=not args.no_progress, resume_from=args.resume_from)
    print((out / "arena.md").read_text())
    print(f"Arena: {out / 'arena.md'} and {out / 'arena.json'}; plots in {out / 'plots'}; cells in {out / 'cells'}")
    return 0


def _cmd_demo(args) -> int:
    import dataclasses

    from jaxpoison.experiments import get_preset, run_pipeline

    if dataset_location("fashion_mnist"):
        config = get_preset("fmnist-badnet-demo")
    else:
        print("Fashion-MNIST not found; using scikit-learn digits. " + get_spec("fashion_mnist").how_to_get)
        config = get_preset("digits-badnet-tiny")
    config = dataclasses.replace(config, seed=args.seed)
    out = Path(args.out)
    print(f"BadNet on {config.data.name} -> train the victim -> detect -> unlearn ({out})")
    report = run_pipeline(config, out, force=args.force, progress=True)
    _print_run(report, out)
    return 0


def _make_trigger(args, image_shape):
    from jaxpoison.attacks import badnet_pixels, blended, square_patch

    if args.attack == "badnet":
        return badnet_pixels(image_shape)
    if args.attack == "square":
        return square_patch(image_shape, size=args.patch_size, color=args.color, margin=args.margin)
    pattern = None
    if args.trigger_image:
        from PIL import Image, UnidentifiedImageError

        if not Path(args.trigger_image).is_file():
            raise InputError(f"--trigger-image {args.trigger_image} does not exist.")
        try:
            with Image.open(args.trigger_image) as im:
                pattern = np.asarray(im.convert("L" if image_shape[-1] == 1 else "RGB"))
        except UnidentifiedImageError:
            raise InputError(f"--trigger-image {args.trigger_image} is not an image file PIL can read.") from None
    return blended(image_shape, args.epsilon, pattern)


def _cmd_poison(args) -> int:
    from jaxpoison.attacks import PoisonConfig, poison_dataset
    from jaxpoison.data import load_splits

    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        raise InputError(f"{out} already holds a poisoned dataset; pass --force to overwrite it.")
    train_set, test_set = load_splits(args.dataset, **_dataset_options(args))
    config = PoisonConfig(target=args.target, source=args.source, rate=args.rate, count=args.count,
                          mode=args.mode, seed=args.seed)  # fmt: skip
    result = poison_dataset(train_set, _make_trigger(args, train_set.image_shape), config)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "poisoned.npz",
        x_train=result.dataset.images, y_train=result.dataset.labels,
        x_test=test_set.images, y_test=test_set.labels,
        poison_indices=result.poison_indices, source_indices=result.source_indices,
    )  # fmt: skip
    manifest = {**result.manifest, "dataset": args.dataset, "attack": args.attack,
                "class_names": list(train_set.class_names)}  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    print(f"{result.manifest['count']} poisons ({args.attack}, target {args.target}) -> {out / 'poisoned.npz'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxpoison", description="Data-poisoning research with influence functions in JAX."
    )
    launch = parser.add_argument_group(
        "multi-process runs (jax.distributed)",
        "Start the same command once per process. Unset flags are read from JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID; --distributed lets JAX detect a SLURM, Open MPI or TPU cluster.")
    launch.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same on every process")
    launch.add_argument("--num-processes", type=int, metavar="N", help="how many processes the run has")
    launch.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0 .. N-1")
    launch.add_argument("--distributed", action="store_true", help="detect the cluster's settings as JAX does")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list known datasets and whether they are available here")
    p.add_argument("--how", choices=dataset_names(), help="also print how to get this dataset")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("train", help="train a model and write DIR/metrics.json")
    p.add_argument("--dataset", required=True, choices=dataset_names())
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics.json)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="default: adam for mlp/logreg/cnn, reference (SGD, 40 epochs) for resnet18/vgg16")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--devices", type=int, default=None, help="devices to shard over (default: all)")
    p.add_argument("--data-path", default=None, help="file for --dataset npz")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("poison", help="write a poisoned training set (DIR/poisoned.npz) and DIR/manifest.json")
    p.add_argument("--dataset", required=True, choices=dataset_names())
    p.add_argument("--attack", required=True, choices=("badnet", "square", "blended"))
    p.add_argument("--target", type=int, required=True, help="label every poison gets")
    p.add_argument("--source", type=int, default=None, help="victim class (default: all classes but the target)")
    how_many = p.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--rate", type=float, help="poisons as a fraction of the training set")
    how_many.add_argument("--count", type=int, help="number of poisons")
    p.add_argument("--mode", choices=("replace", "append"), default="replace")
    p.add_argument("--epsilon", type=float, default=0.1, help="blend ratio of the blended attack")
    p.add_argument("--trigger-image", default=None, help="image file for the blended attack (default: generated)")
    p.add_argument("--patch-size", type=int, default=3)
    p.add_argument("--color", type=float, nargs="+", default=[1.0, 1.0, 0.0])
    p.add_argument("--margin", type=int, default=1)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--data-path", default=None, help="file for --dataset npz")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing poisoned dataset in --out")
    p.set_defaults(func=_cmd_poison)

    p = sub.add_parser("select", help="choose which samples to poison (RS, FUS, RD, HFE, IFS); DIR/indices.npy")
    p.add_argument("--method", required=True, choices=SELECTION_NAMES)
    p.add_argument("--dataset", required=True, choices=dataset_names())
    p.add_argument("--attack", required=True, choices=("blended", "patch", "patched"))
    p.add_argument("--epsilon", type=float, required=True,
                   help="blend ratio (blended), patch opacity (patch), or the patched attack's amplitude on the "
                        "0-255 scale (patched, e.g. 2; on point clouds the cluster's strength)")  # fmt: skip
    p.add_argument("--rate", type=float, required=True, help="poisons as a fraction of the training set")
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--patch-size", type=int, default=None,
                   help="patch side in pixels (patch: 3; patched: 3 per 32 pixels of the image side)")  # fmt: skip
    p.add_argument("--patch-position", default="bottom-right",
                   help="patched: bottom-right, bottom-left, top-right, top-left, center, or ROW,COL")  # fmt: skip
    p.add_argument("--patch-pattern", default="checkerboard", choices=("checkerboard", "solid", "random"),
                   help="patched: the sign pattern added at amplitude ε")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--data-path", default=None, help="file for --dataset npz")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("run", help="poison -> train -> detect -> unlearn -> report, resumable (DIR/report.md)")
    p.add_argument("preset", metavar="PRESET|CONFIG",
                   help="a preset name (see jaxpoison.experiments.PRESETS), a run's run.json, or a JSON config "
                        "file (see --dump-config)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set attack.rate=0.02 --set detection.delta.n_tol=2")  # fmt: skip
    p.add_argument("--out", default=None, help="run directory (required unless --dump-config)")
    p.add_argument("--dump-config", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the configuration (overrides applied) as JSON to FILE (default: standard output) "
                        "and exit without running")  # fmt: skip
    p.add_argument("--force", action="store_true", help="reuse a directory that holds another run's artifacts")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                   help="refuse the run before it starts if a stage's step needs more (default on GPU/TPU: the "
                        "device's memory; on CPU: no check)")  # fmt: skip
    p.add_argument("--fit-batches", action="store_true",
                   help="lower every batch size whose step would not fit the memory budget to the largest that "
                        "does (default: refuse the run)")  # fmt: skip
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plan", help="each stage's batch, FLOPs and memory per step, from XLA, before a run")
    p.add_argument("preset", help="a preset name (see jaxpoison.experiments.PRESETS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--n-train", type=int, default=None, help="training images (default: counted from the dataset)")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                   help="default: the device's memory (GPU/TPU) or this machine's (CPU)")  # fmt: skip
    p.add_argument("--fit-batches", action="store_true",
                   help="plan with every batch size that would not fit lowered to the largest that does")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("detect", help="run detectors on a run directory; writes DIR/detection.json and plots")
    p.add_argument("--method", required=True, help="a detector, a comma-separated list, or 'all'")
    p.add_argument("--run", required=True, help="a directory made by `jaxpoison run`")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("unlearn", help="unlearn flagged points of a run's victim and report PSR / clean accuracy")
    p.add_argument("--run", required=True, help="a directory made by `jaxpoison run`")
    p.add_argument("--method", required=True, choices=UNLEARNERS)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--detector", help="use the flags of a detector that ran in this directory")
    which.add_argument("--flagged", help="a .npy or text file of training indices")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_unlearn)

    p = sub.add_parser("arena", help="every attack × selection × detector × unlearner × seed, with a no-poison "
                                     "control, resumable (DIR/arena.md)")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="an arena preset (arena-digits, arena-fmnist) or a JSON spec file")
    p.add_argument("--out", required=True, help="the arena directory (resumes what it already holds)")
    p.add_argument("--resume-from", metavar="ARENA_JSON",
                   help="take over the finished cells of another arena's arena.json whose configuration matches")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_arena)

    p = sub.add_parser("demo", help="the README's main job: BadNet -> detect -> unlearn (Fashion-MNIST, else digits)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--force", action="store_true", help="reuse a directory that holds another run's artifacts")
    p.set_defaults(func=_cmd_demo)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Recovery notes read as the CLI's own lines; other warnings keep Python's format."""
    if issubclass(category, RecoveryWarning):
        return f"jaxpoison: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    """Run a command. User mistakes (bad input, damaged or misplaced files) print one line and exit 2;
    any other exception is a bug in jaxpoison and keeps its traceback."""
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                   getattr(args, "process_id", None), auto=getattr(args, "distributed", False))  # fmt: skip
        return args.func(args)
    except InputError as e:
        print(f"jaxpoison: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the filesystem: --out is a file, a directory is not writable, a disk is full, ...
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"jaxpoison: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxpoison: interrupted; rerun the same command to resume from the finished stages.", file=sys.stderr)
        return 130
    except Exception as e:
        lost = e if isinstance(e, DistributedError) else None
        if lost is None and jax.process_count() > 1 and isinstance(e, jax.errors.JaxRuntimeError):
            lost = lost_peer("in a collective", e)  # a peer vanished mid-computation
        if lost is None:
            raise
        print(f"jaxpoison: error: {lost}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)  # JAX's orderly shutdown would wait on the dead process and abort: leave now


if __name__ == "__main__":
    sys.exit(main())
