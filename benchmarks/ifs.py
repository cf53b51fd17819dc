"""Which samples to poison: IFS against RS, FUS, RD and HFE under a blended backdoor.

For every setting (blend ratio ε at a fixed rate, and rate r at a fixed low ε) and seed,
each method selects ``round(r · N)`` non-target training images; they get the blended
trigger and the target label (replace mode), a fresh CNN victim trains on the result, and
the attack is measured on triggered test images of every non-target class. Recorded per
method and setting: ``asr_mean``, ``asr_std``, ``class_asr_variance`` (mean over seeds),
``clean_accuracy``, ``seconds`` (selection + victim). A figure plots ASR against ε and r
(the IFS paper's Figures 5–6).

Usage:
  python benchmarks/ifs.py --dataset fashion_mnist --out runs/ifs.json
  python benchmarks/ifs.py --dataset digits --out /tmp/ifs.json          # quick, same code path

The JSON is written after every (setting, method); running the same command again resumes it,
and a larger ``--seeds`` adds the missing seeds to every finished cell.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxpoison.attacks import PoisonConfig, attack_metrics, blended, poison_dataset
from jaxpoison.data import load_splits
from jaxpoison.models import create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.selection import SELECTORS, FUSConfig, IFSConfig, RDConfig, select_poisons
from jaxpoison.training import adam_recipe, train

METHODS = SELECTORS


def select(method, data, trigger, target, rate, seed, budget):
    configs = {
        "fus": FUSConfig(rounds=budget["rounds"], epochs=max(2, budget["proxy_epochs"])),
        "rd": RDConfig(rounds=budget["rounds"], score_epochs=budget["proxy_epochs"]),
        "ifs": IFSConfig(surrogate_epochs=budget["surrogate_epochs"]),
    }
    return select_poisons(method, data, trigger, target, rate, configs.get(method), seed=seed, progress=False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="victim epochs (default 5; digits 10)")
    parser.add_argument("--epsilons", default="0.02,0.04,0.06,0.1")
    parser.add_argument("--rates", default="0.005,0.01,0.02")
    parser.add_argument("--fixed-rate", type=float, default=0.01)
    parser.add_argument("--fixed-epsilon", type=float, default=0.04, help="ε of the rate sweep")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=3, help="FUS / RD rounds")
    parser.add_argument("--proxy-epochs", type=int, default=2, help="FUS / RD proxy-model epochs")
    parser.add_argument("--surrogate-epochs", type=int, default=3, help="IFS surrogate epochs")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    train_set, test_set = load_splits(args.dataset)
    if args.train_size:
        train_set = train_set.subset(np.arange(min(args.train_size, len(train_set))))
    small = args.dataset == "digits"
    recipe = adam_recipe(epochs=args.epochs or (10 if small else 5), batch_size=32 if small else 128)
    budget = {"rounds": args.rounds, "proxy_epochs": args.proxy_epochs, "surrogate_epochs": args.surrogate_epochs}
    methods = [m for m in args.methods.split(",") if m]
    settings = [("epsilon", float(e), args.fixed_rate) for e in args.epsilons.split(",")]
    settings += [
        ("rate", args.fixed_epsilon, float(r))
        for r in args.rates.split(",")
        if float(r) != args.fixed_rate or args.fixed_epsilon not in [s[1] for s in settings]
    ]
    out = {
        "dataset": args.dataset,
        "train_size": len(train_set),
        "target": args.target,
        "victim_epochs": recipe.epochs,
        "budget": budget,
        "seeds": args.seeds,
        "results": [],
        "figure": str(Path(args.out).with_suffix(".png")),
        "environment": environment(),
    }
    done = _finished(Path(args.out), out)
    # cells of methods or settings this invocation does not run are kept as they are
    out["results"] = results = list(done.values())
    position = {key: i for i, key in enumerate(done)}
    for sweep, eps, rate in settings:
        trigger = blended(train_set.image_shape, eps)
        for method in methods:
            key = (sweep, eps, rate, method)
            # resume: a long CPU sweep must survive an interrupted session, and grow by seeds
            runs = list(done[key]["runs"][: args.seeds]) if key in done else []
            poisons = done[key]["poisons"] if key in done else None
            for seed in range(len(runs), args.seeds):
                start = time.perf_counter()
                chosen = select(method, train_set, trigger, args.target, rate, seed, budget)
                selected = time.perf_counter()
                poisoned = poison_dataset(
                    train_set, trigger, PoisonConfig(target=args.target, indices=chosen.indices, seed=seed)
                )
                model = to_functional(create_model("cnn", train_set.image_shape, train_set.num_classes, seed=seed))
                result = train(model, poisoned.dataset, recipe, seed=seed, progress=False)
                metrics = attack_metrics(model.apply, result.params, result.state, test_set, trigger, args.target)
                poisons = int(chosen.indices.size)
                runs.append(
                    {
                        "seed": seed,
                        **{k: metrics[k] for k in ("asr", "class_asr_variance", "clean_accuracy")},
                        "selection_seconds": selected - start,
                        "seconds": time.perf_counter() - start,
                    }
                )
            record = summarize(sweep, eps, rate, method, poisons, runs)
            if key in position:
                results[position[key]] = record
            else:
                position[key] = len(results)
                results.append(record)
            print(
                f"ε={eps:<5} r={rate:<6} {method:4s} ASR {record['asr_mean']:.3f} ± {record['asr_std']:.3f}  "
                f"class var {record['class_asr_variance']:.4f}  clean {record['clean_accuracy']:.4f}  "
                f"{record['seconds']:.0f}s",
                flush=True,
            )
            _write(Path(args.out), out)

    out["paired_vs_rs"] = paired_vs_rs(results)
    for row in out["paired_vs_rs"]:
        print(f"ε={row['epsilon']:<5} r={row['rate']:<6} {row['method']:4s} − RS: ASR {row['asr_diff_mean']:+.3f} "
              f"± {row['asr_diff_std']:.3f} (higher in {row['wins']} of {row['seeds']} seeds)")
    present = [m for m in METHODS if any(r["method"] == m for r in results)]
    plot(results, present, args.fixed_epsilon, Path(out["figure"]))
    _write(Path(args.out), out)
    return out


def paired_vs_rs(results: list[dict]) -> list[dict]:
    """Each method's ASR minus RS's, seed by seed, in every setting where both ran.

    A seed fixes the victim's initialisation and batch order for every method, so only the
    poisons differ within a pair; the spread of the victim across seeds (often larger than the
    gap between methods) cancels out of the difference.
    """
    by_setting = {(r["sweep"], r["epsilon"], r["rate"], r["method"]): r for r in results}
    rows = []
    for (sweep, eps, rate, method), record in by_setting.items():
        baseline = by_setting.get((sweep, eps, rate, "rs"))
        if method == "rs" or baseline is None:
            continue
        n = min(len(record["runs"]), len(baseline["runs"]))  # runs are stored in seed order 0, 1, ...
        diff = np.array([a["asr"] - b["asr"] for a, b in zip(record["runs"][:n], baseline["runs"][:n], strict=True)])
        rows.append({"sweep": sweep, "epsilon": eps, "rate": rate, "method": method, "seeds": int(diff.size),
                     "asr_diff_mean": float(diff.mean()), "asr_diff_std": float(diff.std()),
                     "wins": int(np.sum(diff > 0))})  # fmt: skip
    return rows


def summarize(sweep: str, eps: float, rate: float, method: str, poisons: int, runs: list[dict]) -> dict:
    """One (setting, method) record: the per-seed runs and their means."""
    asr = np.array([r["asr"] for r in runs])
    return {
        "sweep": sweep,
        "epsilon": eps,
        "rate": rate,
        "method": method,
        "poisons": poisons,
        "asr_mean": float(asr.mean()),
        "asr_std": float(asr.std()),
        "class_asr_variance": float(np.mean([r["class_asr_variance"] for r in runs])),
        "clean_accuracy": float(np.mean([r["clean_accuracy"] for r in runs])),
        "seconds": float(np.mean([r["seconds"] for r in runs])),
        "runs": runs,
    }


def _write(path: Path, out: dict) -> None:
    """Write the JSON after every (setting, method) so partial sweeps are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)


def _finished(path: Path, out: dict) -> dict:
    """Records of an earlier run of the same sweep in ``path``, keyed by setting and method."""
    if not path.exists():
        return {}
    previous = json.loads(path.read_text())
    same = ("dataset", "train_size", "target", "victim_epochs", "budget")  # more seeds extend a sweep
    if any(previous.get(k) != out[k] for k in same):
        raise SystemExit(f"{path} holds a different sweep ({', '.join(same)} differ); pass another --out")
    return {(r["sweep"], r["epsilon"], r["rate"], r["method"]): r for r in previous["results"]}


def plot(results, methods, fixed_epsilon: float, path: Path) -> None:
    """ASR against ε and r (top), and each method's ASR minus RS's on the same seeds (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = paired_vs_rs(results)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex="col")
    for col, (sweep, label) in enumerate((("epsilon", "blend ratio ε"), ("rate", "poison rate r"))):

        def in_panel(r, sweep=sweep):
            # the rate panel also takes the ε-sweep point that sits at the fixed ε
            return r["sweep"] == sweep or (sweep == "rate" and r["epsilon"] == fixed_epsilon)

        panels = (
            (results, "asr_mean", "asr_std", "attack success rate"),
            (paired, "asr_diff_mean", "asr_diff_std", "ASR − RS (same seed)"),
        )
        for row, (records, mean, spread, ylabel) in enumerate(panels):
            ax = axes[row, col]
            for method in methods:
                rows = sorted((r for r in records if r["method"] == method and in_panel(r)), key=lambda r: r[sweep])
                if rows:
                    ax.errorbar([r[sweep] for r in rows], [r[mean] for r in rows], [r[spread] for r in rows],
                                marker="o", capsize=3, label=method.upper(),
                                color=f"C{METHODS.index(method)}")  # one colour per method in every panel; fmt: skip
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
