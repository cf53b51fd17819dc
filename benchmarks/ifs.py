"""Which samples to poison: IFS against RS, FUS, RD and HFE (both sort orders) under a blended or patched backdoor.

For every setting (strength ε at a fixed rate, and rate r at a fixed low ε) and seed,
each method selects ``round(r · N)`` non-target training examples; they get the trigger
and the target label (replace mode), a fresh victim (CNN; PointNet on point clouds) trains on the result, and
the attack is measured on triggered test images of every non-target class. A seed fixes the
victim's initialisation and batch order for every method, so within a seed only the poisons
differ. Recorded per (setting, method): each seed's ASR, class-ASR variance, clean accuracy,
seconds, chosen indices, the search budget and the selection's whole ``info`` record
(JSON-safe); their means; and paired differences to RS *and* to RD (mean, 95 % t-interval
over seeds, p-value, wins / N). A figure plots ASR against ε and r (the IFS paper's
Figures 5–6).

Budgets of the two searches (``--budget``):

* ``equal-time`` (default): FUS and RD get the wall-clock time IFS's selection took in the
  same setting and seed. A proxy epoch is timed once per setting; the search gets as many
  rounds of ``--fus-epochs`` / ``--rd-epochs`` epochs as fit (one shorter round if not even
  one fits; never more than the published budget). IFS must run in the same sweep (it runs
  first in each setting) or be stored in the JSON.
* ``published``: the reference budgets — FUS 10 rounds of 70-epoch proxies keeping 50 %,
  RD 30 rounds of 6-epoch score models with drop ratio 0.5 · 0.93^t. Hours per selection on a CPU.
* ``fixed``: ``--rounds`` × ``--proxy-epochs`` for both (the earlier sweeps: 3 × 2).

Attacks (``--attack``): ``blended`` (ε a blend ratio; default ε ∈ {0.02, 0.04, 0.06, 0.1}, rate
sweep at 0.04) or ``patched`` (the IFS paper's patched attack: ε an amplitude on the 0–255 scale,
default ε ∈ {2, 4, 8}, rate sweep at ε = 2; ``--patch-size`` / ``--patch-position`` /
``--patch-pattern`` set its geometry). On point clouds (``--dataset shapes3d``) ``patched`` is the
point-cluster trigger of :mod:`jaxpoison.attacks.pointcloud`, HFE is left out (it refuses point
clouds) and the victim and proxies are PointNets.

Usage:
  python benchmarks/ifs.py --dataset fashion_mnist --out runs/ifs.json
  python benchmarks/ifs.py --dataset fashion_mnist --attack patched --out runs/ifs_patched.json
  python benchmarks/ifs.py --dataset digits --seeds 2 --out /tmp/ifs.json   # quick, same code path

The JSON is written after every (setting, method); running the same command again resumes it,
and a larger ``--seeds`` adds the missing seeds to every finished cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxpoison.attacks import (
    PoisonConfig,
    attack_metrics,
    blended,
    parse_position,
    patched,
    point_patch,
    poison_dataset,
)
from jaxpoison.data import load_splits
from jaxpoison.data.pointcloud import is_point_cloud
from jaxpoison.experiments.stats import paired_stats
from jaxpoison.models import create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.selection import (
    SELECTION_NAMES,
    VARIANTS,
    FUSConfig,
    IFSConfig,
    ProxyTrainer,
    RDConfig,
    select_poisons,
)
from jaxpoison.training import adam_recipe, train

METHODS = SELECTION_NAMES
BUDGET_MODES = ("equal-time", "published", "fixed")
SEARCHES = ("fus", "rd")  # the methods whose cost is rounds × proxy epochs
# Reference budgets (xpf/Data-Efficient-Backdoor-Attacks; WU-YU-TONG/computational_efficient_backdoor).
PUBLISHED = {
    "fus": {"rounds": 10, "epochs": 70, "keep_fraction": 0.5},
    "rd": {"rounds": 30, "epochs": 6, "ratio": 0.5, "decay": 0.93},
}
MIN_EPOCHS = {"fus": 2, "rd": 1}  # a forgetting event spans two epochs


# --------------------------------------------------------------------------- budgets


def published_budget(method: str) -> dict:
    """The reference budget of FUS or RD, as a budget record."""
    spec = PUBLISHED[method]
    return {"mode": "published", **spec, "total_epochs": spec["rounds"] * spec["epochs"]}


def equal_time_budget(
    target_seconds: float,
    epoch_seconds: float,
    *,
    epochs_per_round: int,
    max_rounds: int,
    max_epochs: int,
    min_epochs: int = 1,
) -> dict:
    """Rounds × epochs of a proxy search that fit ``target_seconds`` at ``epoch_seconds`` per proxy epoch.

    The search gets ``⌊target / epoch⌋`` proxy epochs (rounded down: never more time than the
    method it is matched with), spent in rounds of ``epochs_per_round``. Once the rounds reach
    the published ``max_rounds``, the rest lengthens every round (up to ``max_epochs``). If not
    even one round fits, one round of what fits (at least ``min_epochs``, so ``over_time`` may be
    set); if the published budget (``max_rounds`` × ``max_epochs``) fits, exactly that (``capped``).

    Raises:
      ValueError: a non-positive ``epoch_seconds`` or negative ``target_seconds``.
    """
    if not (math.isfinite(epoch_seconds) and epoch_seconds > 0):
        raise ValueError(f"epoch_seconds must be positive; got {epoch_seconds}.")
    if not (math.isfinite(target_seconds) and target_seconds >= 0):
        raise ValueError(f"target_seconds must be ≥ 0; got {target_seconds}.")
    if min(epochs_per_round, max_rounds, max_epochs, min_epochs) < 1:
        raise ValueError("epochs_per_round, max_rounds, max_epochs and min_epochs must be positive.")
    fits = int(target_seconds // epoch_seconds)
    per_round = min(epochs_per_round, max_epochs)
    capped = fits >= max_rounds * max_epochs
    if capped:
        rounds, epochs = max_rounds, max_epochs
    elif fits >= max_rounds * per_round:
        rounds, epochs = max_rounds, fits // max_rounds
    elif fits >= per_round:
        rounds, epochs = fits // per_round, per_round
    else:
        rounds, epochs = 1, min(max(min_epochs, fits), max_epochs)
    return {
        "mode": "equal-time",
        "rounds": rounds,
        "epochs": epochs,
        "total_epochs": rounds * epochs,
        "target_seconds": float(target_seconds),
        "epoch_seconds": float(epoch_seconds),
        "capped": capped,
        "over_time": rounds * epochs * epoch_seconds > target_seconds,
    }


def method_config(method: str, budget: dict | None, surrogate_epochs: int, model: str = "cnn",
                  model_kwargs: dict | None = None):  # fmt: skip
    """The selection config of ``method`` under ``budget`` (``None`` for methods without one); FUS, RD
    and IFS train ``model`` proxies built with ``model_kwargs``."""
    if method in VARIANTS:
        return VARIANTS[method][1]
    proxy = {"model": model, "model_kwargs": dict(model_kwargs or {})}
    if method == "fus":
        return FUSConfig(rounds=budget["rounds"], epochs=max(MIN_EPOCHS["fus"], budget["epochs"]),
                         keep_fraction=budget.get("keep_fraction", 0.5), **proxy)  # fmt: skip
    if method == "rd":
        return RDConfig(rounds=budget["rounds"], score_epochs=budget["epochs"], ratio=budget.get("ratio", 0.5),
                        decay=budget.get("decay", 0.93), **proxy)  # fmt: skip
    if method == "ifs":
        return IFSConfig(surrogate_epochs=surrogate_epochs, **proxy)
    return None


DEFAULT_EPSILONS = {"blended": ("0.02,0.04,0.06,0.1", 0.04), "patched": ("2,4,8", 2.0)}


def make_trigger(attack: str, dataset, epsilon: float, args=None):
    """The trigger of strength ``epsilon``: blended, or patched (the point cluster on point clouds)."""
    if attack == "blended":
        return blended(dataset.image_shape, epsilon)
    if is_point_cloud(dataset):
        return point_patch(epsilon)
    size = getattr(args, "patch_size", None)
    position = parse_position(getattr(args, "patch_position", "bottom-right"))
    return patched(dataset.image_shape, epsilon, size=size, position=position,
                   pattern=getattr(args, "patch_pattern", "checkerboard"))  # fmt: skip


def measure_epoch_seconds(dataset, config: FUSConfig | RDConfig, epochs: int = 3) -> float:
    """Seconds per proxy epoch of ``config``'s model on ``dataset``: the time between the ends of the
    first and the last of ``epochs`` epochs (so neither compilation nor model set-up counts)."""
    import jax

    trainer = ProxyTrainer(config.model, config.model_kwargs, dataset, epochs=epochs,
                           learning_rate=config.learning_rate, batch_size=config.batch_size)  # fmt: skip
    ends: list[float] = []

    def on_epoch(epoch, model):
        jax.block_until_ready(model)  # dispatch is asynchronous: wait for the epoch to finish
        ends.append(time.perf_counter())

    trainer.fit(dataset, 0, on_epoch=on_epoch)
    return (ends[-1] - ends[0]) / (epochs - 1)


# --------------------------------------------------------------------------- paired statistics


def paired_rows(results: list[dict], baseline: str, confidence: float = 0.95) -> list[dict]:
    """Each method's ASR minus ``baseline``'s, paired by seed, in every setting where both ran.

    Pairing by seed cancels the victim's seed-to-seed spread (often larger than the gap
    between methods) out of the difference.
    """
    by_setting = {(r["sweep"], r["epsilon"], r["rate"], r["method"]): r for r in results}
    rows = []
    for (sweep, eps, rate, method), record in by_setting.items():
        base = by_setting.get((sweep, eps, rate, baseline))
        if method == baseline or base is None:
            continue
        base_asr = {run["seed"]: run["asr"] for run in base["runs"]}
        diffs = [run["asr"] - base_asr[run["seed"]] for run in sorted(record["runs"], key=lambda r: r["seed"])
                 if run["seed"] in base_asr]  # fmt: skip
        if not diffs:
            continue
        s = paired_stats(diffs, confidence)
        rows.append({"sweep": sweep, "epsilon": eps, "rate": rate, "method": method, "baseline": baseline,
                     "seeds": s["n"], "asr_diff_mean": s["mean"], "asr_diff_std": s["std"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "t_quantile": s["t_quantile"], "p_value": s["p_value"],
                     "confidence": confidence, "wins": s["wins"], "losses": s["losses"],
                     "ties": s["ties"]})  # fmt: skip
    return rows


# --------------------------------------------------------------------------- JSON records


def json_safe(obj, array_limit: int = 4096):
    """``obj`` as strict JSON: arrays to lists (summarised above ``array_limit`` values), NaN/±inf to
    ``None``, dict keys to strings, dataclasses to dicts, anything else to its ``repr``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v, array_limit) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, array_limit) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj), array_limit)
    if isinstance(obj, np.ndarray):
        if obj.size <= array_limit:
            return json_safe(obj.tolist(), array_limit)
        summary = {"omitted": f"{obj.size} values (over the limit of {array_limit})", "shape": list(obj.shape),
                   "dtype": str(obj.dtype)}  # fmt: skip
        if np.issubdtype(obj.dtype, np.number) and np.isfinite(obj).any():
            finite = obj[np.isfinite(obj)].astype(np.float64)
            summary.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()))
        return summary
    if isinstance(obj, np.generic):
        return json_safe(obj.item(), array_limit)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return repr(obj)


def summarize(sweep: str, eps: float, rate: float, method: str, poisons: int, runs: list[dict]) -> dict:
    """One (setting, method) record: the per-seed runs, their means, and the searches' diagnostics."""
    runs = sorted(runs, key=lambda r: r["seed"])
    asr = np.array([r["asr"] for r in runs])
    record = {
        "sweep": sweep,
        "epsilon": eps,
        "rate": rate,
        "method": method,
        "poisons": poisons,
        "asr_per_seed": {str(r["seed"]): r["asr"] for r in runs},
        "asr_mean": float(asr.mean()),
        "asr_std": float(asr.std()),
        "class_asr_variance": float(np.mean([r["class_asr_variance"] for r in runs])),
        "clean_accuracy": float(np.mean([r["clean_accuracy"] for r in runs])),
        "selection_seconds": float(np.mean([r["selection_seconds"] for r in runs])),
        "seconds": float(np.mean([r["seconds"] for r in runs])),
    }
    infos = [r["info"] for r in runs if isinstance(r.get("info"), dict)]
    shares = [i["refilled_share"] for i in infos if i.get("refilled_share") is not None]
    if shares:  # the final set's share drawn at random after the last round (FUS, RD)
        record["refilled_share"] = float(np.mean(shares))
    events = [i["events"] for i in infos if isinstance(i.get("events"), dict)]
    if events:  # FUS: forgetting events over all seeds' final candidates and selections
        record["fus_events"] = {
            "candidates": _add_histograms([e["candidates"] for e in events]),
            "selected": _add_histograms([e["selected"] for e in events]),
            "kept_by_tie_break": float(np.mean([e["kept_by_tie_break"] for e in events])),
            "max_possible": sorted({e["max_possible"] for e in events}),
        }
    budgets = [r["budget"] for r in runs if r.get("budget")]
    if budgets:
        record["budget"] = {
            "mode": sorted({b["mode"] for b in budgets}),
            "rounds_x_epochs": sorted({f"{b['rounds']}x{b['epochs']}" for b in budgets}),
        }
    record["runs"] = runs
    return record


def _add_histograms(hists: list[list[int]]) -> list[int]:
    total = np.zeros(max((len(h) for h in hists), default=0), np.int64)
    for h in hists:
        total[: len(h)] += np.asarray(h, np.int64)
    return total.tolist()


def _write(path: Path, out: dict) -> None:
    """Write the JSON after every (setting, method) so partial sweeps are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, allow_nan=False))
    tmp.replace(path)


def _finished(path: Path, out: dict) -> dict:
    """Records of an earlier run of the same sweep in ``path``, keyed by setting and method."""
    if not path.exists():
        return {}
    previous = json.loads(path.read_text())
    # files written before budget modes existed ran the fixed budget
    previous["budget"] = {"mode": "fixed", **previous.get("budget", {})}
    # files written before --attack and --model existed ran the blended attack on CNNs
    defaults = {"attack": "blended", "model": "cnn", "model_kwargs": {}, "data_options": {}}
    same = ("dataset", "data_options", "attack", "model", "model_kwargs", "train_size", "target", "victim_epochs",
            "budget")  # fmt: skip
    if any(previous.get(k, defaults.get(k)) != out.get(k, defaults.get(k)) for k in same):
        raise SystemExit(f"{path} holds a different sweep ({', '.join(same)} differ); pass another --out")
    for record in previous["results"]:
        for position, run in enumerate(record["runs"]):
            run.setdefault("seed", position)  # older files stored the runs of seeds 0, 1, … in order
    return {(r["sweep"], r["epsilon"], r["rate"], r["method"]): r for r in previous["results"]}


# --------------------------------------------------------------------------- the sweep


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits", "shapes3d"))
    parser.add_argument("--attack", default="blended", choices=tuple(DEFAULT_EPSILONS),
                        help="blended (ε a blend ratio) or patched (ε on the 0-255 scale; point clusters on "
                             "point clouds)")  # fmt: skip
    parser.add_argument("--model", default=None, help="victim and proxy model (default: cnn; pointnet on point "
                                                      "clouds)")  # fmt: skip
    parser.add_argument("--data-options", type=json.loads, default=None,
                        help='dataset loader options as JSON, e.g. \'{"points": 128}\' for shapes3d')  # fmt: skip
    parser.add_argument("--model-kwargs", type=json.loads, default=None,
                        help='victim and proxy constructor arguments as JSON, e.g. \'{"point_widths": [64, 128, 256], '
                             '"head_widths": [128]}\' (default: the model\'s own)')  # fmt: skip
    parser.add_argument("--patch-size", type=int, default=None, help="patched: patch side in pixels")
    parser.add_argument("--patch-position", default="bottom-right", help="patched: a corner, center or ROW,COL")
    parser.add_argument("--patch-pattern", default="checkerboard", help="patched: checkerboard, solid or random")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="victim epochs (default 5; digits 10)")
    parser.add_argument("--epsilons", default=None, help="default: 0.02,0.04,0.06,0.1 (blended); 2,4,8 (patched)")
    parser.add_argument("--rates", default="0.005,0.01,0.02")
    parser.add_argument("--fixed-rate", type=float, default=0.01)
    parser.add_argument("--fixed-epsilon", type=float, default=None, help="ε of the rate sweep (0.04; patched: 2)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--budget", default="equal-time", choices=BUDGET_MODES, help="FUS / RD budget mode")
    parser.add_argument("--fus-epochs", type=int, default=6, help="equal-time: FUS proxy epochs per round")
    parser.add_argument("--rd-epochs", type=int, default=2, help="equal-time: RD score-model epochs per round")
    parser.add_argument("--rounds", type=int, default=3, help="fixed budget: FUS / RD rounds")
    parser.add_argument("--proxy-epochs", type=int, default=2, help="fixed budget: FUS / RD proxy-model epochs")
    parser.add_argument("--surrogate-epochs", type=int, default=3, help="IFS surrogate epochs")
    parser.add_argument("--info-array-limit", type=int, default=4096,
                        help="info arrays longer than this are stored as a summary")  # fmt: skip
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.epsilons = args.epsilons or DEFAULT_EPSILONS[args.attack][0]
    args.fixed_epsilon = DEFAULT_EPSILONS[args.attack][1] if args.fixed_epsilon is None else args.fixed_epsilon
    if args.budget == "equal-time" and "ifs" in methods:
        # FUS and RD are matched to IFS's time in the same seed: IFS runs first in every setting
        methods.sort(key=lambda m: m != "ifs")
    train_set, test_set = load_splits(args.dataset, **(args.data_options or {}))
    if args.train_size:
        train_set = train_set.subset(np.arange(min(args.train_size, len(train_set))))
    points = is_point_cloud(train_set)
    model_name = args.model or ("pointnet" if points else "cnn")
    if points and args.attack != "patched":
        parser.error("point clouds take --attack patched (the point-cluster trigger)")
    if points and any(m in ("hfe", "hfe_asc") for m in methods):
        if args.methods != ",".join(METHODS):
            parser.error("HFE is not suitable for 3D point cloud tasks (a frequency-domain image method); drop it")
        methods = [m for m in methods if m not in ("hfe", "hfe_asc")]
    small = args.dataset in ("digits", "shapes3d")
    recipe = adam_recipe(epochs=args.epochs or (10 if small else 5), batch_size=32 if small else 128)
    budget = {"mode": args.budget, "surrogate_epochs": args.surrogate_epochs}
    budget.update({"fixed": {"rounds": args.rounds, "proxy_epochs": args.proxy_epochs},
                   "equal-time": {"fus_epochs": args.fus_epochs, "rd_epochs": args.rd_epochs},
                   "published": {"fus": PUBLISHED["fus"], "rd": PUBLISHED["rd"]}}[args.budget])  # fmt: skip
    settings = [("epsilon", float(e), args.fixed_rate) for e in args.epsilons.split(",")]
    settings += [
        ("rate", args.fixed_epsilon, float(r))
        for r in args.rates.split(",")
        if float(r) != args.fixed_rate or args.fixed_epsilon not in [s[1] for s in settings]
    ]
    out = {
        "dataset": args.dataset,
        "data_options": args.data_options or {},
        "attack": args.attack,
        "model": model_name,
        "model_kwargs": args.model_kwargs or {},
        "train_size": len(train_set),
        "target": args.target,
        "victim_epochs": recipe.epochs,
        "budget": budget,
        "seeds": args.seeds,
        "results": [],
        "figure": str(Path(args.out).with_suffix(".png")),
        "environment": environment(),
    }
    print(f"FUS / RD budget: {args.budget} ({json.dumps({k: v for k, v in budget.items() if k != 'mode'})})")
    done = _finished(Path(args.out), out)
    # cells of methods or settings this invocation does not run are kept as they are
    out["results"] = results = list(done.values())
    position = {key: i for i, key in enumerate(done)}
    for sweep, eps, rate in settings:
        trigger = make_trigger(args.attack, train_set, eps, args)
        epoch_seconds: dict[str, float] = {}  # proxy-epoch time, measured once per setting
        for method in methods:
            key = (sweep, eps, rate, method)
            # resume: a long CPU sweep must survive an interrupted session, and grow by seeds
            runs = [r for r in done[key]["runs"] if r["seed"] < args.seeds] if key in done else []
            poisons = done[key]["poisons"] if key in done else None
            for seed in sorted(set(range(args.seeds)) - {r["seed"] for r in runs}):
                run_budget = None
                if method in SEARCHES:
                    ifs_cell = results[position[(sweep, eps, rate, "ifs")]] if (sweep, eps, rate, "ifs") in position \
                        else None  # fmt: skip
                    run_budget = search_budget(method, seed, args, ifs_cell, epoch_seconds, train_set, model_name)
                config = method_config(method, run_budget, args.surrogate_epochs, model_name, args.model_kwargs)
                start = time.perf_counter()
                base = VARIANTS[method][0] if method in VARIANTS else method
                chosen = select_poisons(base, train_set, trigger, args.target, rate, config, seed=seed,
                                        progress=False)  # fmt: skip
                selected = time.perf_counter()
                poisoned = poison_dataset(
                    train_set, trigger, PoisonConfig(target=args.target, indices=chosen.indices, seed=seed)
                )
                model = to_functional(create_model(model_name, train_set.image_shape, train_set.num_classes, seed=seed,
                                                   **(args.model_kwargs or {})),
                                      train_set.mean, train_set.std)  # fmt: skip
                model = train(model, poisoned.dataset, recipe, seed=seed, progress=False).model
                metrics = attack_metrics(model, test_set, trigger, args.target)
                poisons = int(chosen.indices.size)
                runs.append(
                    {
                        "seed": seed,
                        **{k: metrics[k] for k in ("asr", "class_asr_variance", "clean_accuracy")},
                        "selection_seconds": selected - start,
                        "seconds": time.perf_counter() - start,
                        "budget": run_budget,
                        "indices": chosen.indices.tolist(),
                        "info": json_safe(chosen.info, args.info_array_limit),
                    }
                )
            record = summarize(sweep, eps, rate, method, poisons, runs)
            if key in position:
                results[position[key]] = record
            else:
                position[key] = len(results)
                results.append(record)
            print(cell_line(record), flush=True)
            _write(Path(args.out), out)

    out["paired_vs_rs"] = paired_rows(results, "rs")
    out["paired_vs_rd"] = paired_rows(results, "rd")
    print(table(results, out["paired_vs_rs"], out["paired_vs_rd"], args.budget))
    present = [m for m in METHODS if any(r["method"] == m for r in results)]
    strength = "blend ratio ε" if args.attack == "blended" else "strength ε (patched)"
    plot(results, present, args.fixed_epsilon, Path(out["figure"]), strength)
    _write(Path(args.out), out)
    return out


def search_budget(method: str, seed: int, args, ifs_cell: dict | None, epoch_seconds: dict, train_set,
                  model: str = "cnn") -> dict:  # fmt: skip
    """The budget of FUS or RD for one seed under ``args.budget``."""
    if args.budget == "published":
        return published_budget(method)
    if args.budget == "fixed":
        return {"mode": "fixed", "rounds": args.rounds, "epochs": args.proxy_epochs,
                "total_epochs": args.rounds * args.proxy_epochs}  # fmt: skip
    ifs_runs = {r["seed"]: r for r in ifs_cell["runs"]} if ifs_cell else {}
    if seed not in ifs_runs:
        raise SystemExit(f"the equal-time budget of {method} needs IFS's selection time for seed {seed} in this "
                         "setting; add ifs to --methods (or use --budget fixed/published)")  # fmt: skip
    if method not in epoch_seconds:
        config = method_config(method, {"rounds": 1, "epochs": 2}, 0, model, getattr(args, "model_kwargs", None))
        epoch_seconds[method] = measure_epoch_seconds(train_set, config)
    per_round = args.fus_epochs if method == "fus" else args.rd_epochs
    spec = PUBLISHED[method]
    budget = equal_time_budget(ifs_runs[seed]["selection_seconds"], epoch_seconds[method],
                               epochs_per_round=per_round, max_rounds=spec["rounds"], max_epochs=spec["epochs"],
                               min_epochs=MIN_EPOCHS[method])  # fmt: skip
    return {**{k: v for k, v in spec.items() if k not in ("rounds", "epochs")}, **budget}


def cell_line(record: dict) -> str:
    """One printed line per finished (setting, method)."""
    line = (f"ε={record['epsilon']:<5} r={record['rate']:<6} {record['method']:7s} ASR {record['asr_mean']:.3f} ± "
            f"{record['asr_std']:.3f}  class var {record['class_asr_variance']:.4f}  "
            f"clean {record['clean_accuracy']:.4f}  select {record['selection_seconds']:.0f}s  "
            f"total {record['seconds']:.0f}s")  # fmt: skip
    if "budget" in record:
        line += f"  budget {'/'.join(record['budget']['mode'])} {','.join(record['budget']['rounds_x_epochs'])}"
    if "refilled_share" in record:
        line += f"  random share {record['refilled_share']:.2f}"
    if "fus_events" in record:
        line += f"  events cand {record['fus_events']['candidates']} sel {record['fus_events']['selected']}"
    return line


def table(results: list[dict], vs_rs: list[dict], vs_rd: list[dict], mode: str) -> str:
    """A Markdown table of every cell with its paired differences to RS and to RD."""

    def paired(rows, r):
        row = next((p for p in rows if (p["sweep"], p["epsilon"], p["rate"], p["method"])
                    == (r["sweep"], r["epsilon"], r["rate"], r["method"])), None)  # fmt: skip
        if row is None:
            return "–"
        ci = "" if row["ci_low"] is None else f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        return f"{row['asr_diff_mean']:+.3f}{ci} ({row['wins']}/{row['seeds']})"

    lines = [f"FUS / RD budget: {mode}. Paired differences: mean over seeds [95 % t-interval] (wins/N).", "",
             "| ε | r | method | seeds | ASR (mean ± std) | − RS, paired | − RD, paired | budget (rounds×epochs) "
             "| random share | select s |", "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(results, key=lambda r: (r["sweep"] != "epsilon", r["epsilon"], r["rate"], order[r["method"]])):
        budget = ",".join(r["budget"]["rounds_x_epochs"]) if "budget" in r else "–"
        share = f"{r['refilled_share']:.2f}" if "refilled_share" in r else "–"
        seconds = f"{r['selection_seconds']:.0f}" if "selection_seconds" in r else "–"
        lines.append(f"| {r['epsilon']} | {100 * r['rate']:g} % | {r['method'].upper()} | {len(r['runs'])} | "
                     f"{r['asr_mean']:.3f} ± {r['asr_std']:.3f} | {paired(vs_rs, r)} | {paired(vs_rd, r)} | {budget} "
                     f"| {share} | {seconds} |")  # fmt: skip
    return "\n".join(lines)


def plot(results, methods, fixed_epsilon: float, path: Path, strength: str = "blend ratio ε") -> None:
    """ASR against ε and r (top), and each method's ASR minus RS's on the same seeds with 95 % CIs (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = paired_rows(results, "rs")
    for row in paired:  # error bar: the half-width of the t-interval (0 with one seed)
        row["ci_half"] = 0.0 if row["ci_high"] is None else row["ci_high"] - row["asr_diff_mean"]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex="col")
    for col, (sweep, label) in enumerate((("epsilon", strength), ("rate", "poison rate r"))):

        def in_panel(r, sweep=sweep):
            # the rate panel also takes the ε-sweep point that sits at the fixed ε
            return r["sweep"] == sweep or (sweep == "rate" and r["epsilon"] == fixed_epsilon)

        panels = (
            (results, "asr_mean", "asr_std", "attack success rate"),
            (paired, "asr_diff_mean", "ci_half", "ASR − RS (same seed, 95 % CI)"),
        )
        for row, (records, mean, spread, ylabel) in enumerate(panels):
            ax = axes[row, col]
            for method in methods:
                rows = sorted((r for r in records if r["method"] == method and in_panel(r)), key=lambda r: r[sweep])
                if rows:  # one colour per method in every panel
                    xs, ys, spreads = ([r[f] for r in rows] for f in (sweep, mean, spread))
                    ax.errorbar(xs, ys, spreads, marker="o", capsize=3, label=method.upper(),
                                color=f"C{METHODS.index(method)}")  # fmt: skip
            if row == 1:
                ax.axhline(0.0, color="black", lw=0.8)
                ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
