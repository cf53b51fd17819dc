"""jaxpoison vs kronfluence: EK-FAC pairwise influence scores, agreement and wall time.

Both libraries score the same model on the same data with the same settings:

* the CNN of ``jaxpoison.models.cnn`` is trained with JAX (Adam, ``--epochs``) on the
  first ``--n-train`` training images, which are also the training set whose influence
  is scored (so the scores describe the model's actual training data);
* an identical PyTorch network is built and the trained weights are copied into it;
  the logits of both are checked to agree before anything is timed;
* EK-FAC factors with the empirical Fisher (the dataset's labels) are fitted on those
  ``N`` images, and the influence of every training image on ``--queries`` test images
  (the first ``Q`` of the test split, measured against their true labels) is computed
  with the margin measurement, the summed cross-entropy as training loss and the same
  constant damping ``--damping`` and batch size ``--batch-size`` on both sides.

Times are wall-clock seconds of the library calls, as a user pays them: jaxpoison's
include JIT compilation (a second, warm call is timed too unless ``--no-warm-repeat``),
kronfluence's include writing its factors and scores to a temporary directory.
kronfluence is timed twice for scoring: all ``Q`` queries in one batch, and one query per
batch (``kronfluence_score_one_query_at_a_time_s``, the setting of the reference
Δ-Influence code), which re-reads the training set once per query.

Agreement is the Pearson and Spearman correlation of the flattened ``[Q, N]`` score
matrices, the mean and minimum per-query Spearman, and the mean overlap of the top-100
training points per query.

Usage:
  python benchmarks/vs_kronfluence.py --dataset digits --n-train 1437 --queries 8 --out /tmp/vsk_digits.json
  python benchmarks/vs_kronfluence.py --n-train 10000 --queries 51 --out runs/vs_kronfluence_10k.json
  python benchmarks/vs_kronfluence.py --queries 51 --out runs/vs_kronfluence.json   # all 60,000 images
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import kronfluence
import numpy as np
import scipy
import scipy.stats
import torch
import torch.nn.functional as F
from flax import nnx
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from torch import nn

from jaxpoison.data import Dataset, load_splits
from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
from jaxpoison.models import FunctionalModel, create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.training import adam_recipe, evaluate, train

TOP_K = 100
LOGIT_TOLERANCE = 1e-4  # max |logit difference| allowed between the JAX and the PyTorch model, relative to max |logit|


# --------------------------------------------------------------------------- the PyTorch twin of the CNN


class TorchCNN(nn.Module):
    """PyTorch copy of ``jaxpoison.models.cnn.CNN`` (NCHW inputs).

    Before ``fc1`` the feature map is permuted to NHWC and flattened, so ``fc1`` sees the
    same vector, in the same order, as the JAX model's ``fc1`` and its weight is just the
    transposed JAX kernel.
    """

    def __init__(self, in_channels: int, width: int, flat_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(flat_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as JAX flattens
        return self.fc2(F.relu(self.fc1(x)))


def torch_twin(model: FunctionalModel) -> TorchCNN:
    """A :class:`TorchCNN` holding the JAX model's weights (HWIO → OIHW, ``(in, out)`` → ``(out, in)``)."""
    p = jax_to_numpy(nnx.to_pure_dict(model.params))
    c_in, width = p["conv1"]["kernel"].shape[2:]
    flat, hidden = p["fc1"]["kernel"].shape
    twin = TorchCNN(c_in, width, flat, hidden, p["fc2"]["kernel"].shape[1])
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            getattr(twin, name).weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            getattr(twin, name).bias.copy_(torch.from_numpy(p[name]["bias"]))
        for name in ("fc1", "fc2"):
            getattr(twin, name).weight.copy_(torch.from_numpy(p[name]["kernel"].T.copy()))
            getattr(twin, name).bias.copy_(torch.from_numpy(p[name]["bias"]))
    return twin.eval()


def jax_to_numpy(tree: dict) -> dict:
    """Nested dict of JAX arrays → nested dict of writable float32 NumPy copies."""
    return {k: jax_to_numpy(v) if isinstance(v, dict) else np.array(v, np.float32) for k, v in tree.items()}


def to_nchw(images: np.ndarray, data: Dataset) -> torch.Tensor:
    """Pixel-space NHWC images → normalised NCHW tensor (normalised with the training set's constants)."""
    return torch.from_numpy(((images - data.mean) / data.std).transpose(0, 3, 1, 2).copy())


def check_logits_agree(model: FunctionalModel, twin: TorchCNN, images: np.ndarray, data: Dataset) -> float:
    """Max |logit difference| of the two models on ``images``; raises if above tolerance."""
    jax_logits = np.asarray(model.apply(model.params, model.state, (images - data.mean) / data.std))
    with torch.no_grad():
        torch_logits = twin(to_nchw(images, data)).numpy()
    diff = float(np.abs(jax_logits - torch_logits).max())
    scale = max(1.0, float(np.abs(jax_logits).max()))
    assert diff <= LOGIT_TOLERANCE * scale, f"JAX and PyTorch logits differ by {diff:.3g} (scale {scale:.3g})"
    return diff


# --------------------------------------------------------------------------- kronfluence task


class MarginTask(Task):
    """Summed cross-entropy as training loss; kronfluence's classification margin as measurement."""

    def compute_train_loss(self, batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
        inputs, labels = batch
        logits = model(inputs)
        if sample:  # true Fisher: labels drawn from the model (unused with use_empirical_fisher=True)
            with torch.no_grad():
                labels = torch.multinomial(F.softmax(logits, dim=-1), 1).flatten()
        return F.cross_entropy(logits, labels, reduction="sum")

    def compute_measurement(self, batch, model: nn.Module) -> torch.Tensor:
        inputs, labels = batch
        logits = model(inputs)
        true_class = F.one_hot(labels, logits.shape[-1]).bool()
        logit_y = logits[true_class]
        others = logits.masked_fill(true_class, float("-inf")).logsumexp(dim=-1)
        return -(logit_y - others).sum()


# --------------------------------------------------------------------------- timing


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_jaxpoison(model, train_set, queries, args) -> dict:
    factor_config = FactorConfig(strategy="ekfac", fisher="empirical", batch_size=args.batch_size)
    score_config = ScoreConfig(measurement="margin", damping=args.damping, batch_size=args.batch_size)

    def fit():
        return fit_factors(model, train_set, factor_config, progress=False)

    def score(factors):
        return pairwise_scores(model, train_set, queries.images, queries.labels, factors, score_config,
                               progress=False).values  # fmt: skip

    factors, fit_s = timed(fit)
    scores, score_s = timed(score, factors)
    out = {"scores": np.asarray(scores), "fit_s": fit_s, "score_s": score_s}
    if not args.no_warm_repeat:  # the same calls again: compiled functions come from JAX's cache
        factors, out["fit_warm_s"] = timed(fit)
        _, out["score_warm_s"] = timed(score, factors)
    return out


def run_kronfluence(twin: TorchCNN, train_set: Dataset, queries: Dataset, args, workdir: str) -> dict:
    task = MarginTask()
    tracked = prepare_model(twin, task)
    analyzer = Analyzer(analysis_name="vs_jaxpoison", model=tracked, task=task, cpu=True, disable_tqdm=True,
                        output_dir=workdir, log_level=logging.WARNING)  # fmt: skip
    train_data = torch.utils.data.TensorDataset(to_nchw(train_set.images, train_set),
                                                torch.from_numpy(train_set.labels.astype(np.int64)))  # fmt: skip
    query_data = torch.utils.data.TensorDataset(to_nchw(queries.images, train_set),
                                                torch.from_numpy(queries.labels.astype(np.int64)))  # fmt: skip
    factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=True,
                                  covariance_max_examples=None, lambda_max_examples=None)  # fmt: skip
    score_args = ScoreArguments(damping_factor=args.damping)

    _, fit_s = timed(analyzer.fit_all_factors, factors_name="ekfac", dataset=train_data,
                     per_device_batch_size=args.batch_size, factor_args=factor_args)  # fmt: skip

    def score(name: str, query_batch: int) -> float:
        _, seconds = timed(analyzer.compute_pairwise_scores, scores_name=name, factors_name="ekfac",
                           query_dataset=query_data, train_dataset=train_data,
                           per_device_query_batch_size=query_batch, per_device_train_batch_size=args.batch_size,
                           score_args=score_args)  # fmt: skip
        return seconds

    out = {"fit_s": fit_s, "score_s": score("batched", len(queries))}
    out["scores"] = analyzer.load_pairwise_scores("batched")["all_modules"].double().numpy()
    if not args.skip_one_at_a_time:
        out["score_one_query_at_a_time_s"] = score("one_at_a_time", 1)
        single = analyzer.load_pairwise_scores("one_at_a_time")["all_modules"].double().numpy()
        out["one_at_a_time_max_rel_diff"] = float(np.abs(single - out["scores"]).max() / np.abs(out["scores"]).max())
    return out


# --------------------------------------------------------------------------- agreement


def agreement(ours: np.ndarray, theirs: np.ndarray, k: int = TOP_K) -> dict:
    """Correlations of two ``[Q, N]`` score matrices, overall and per query, and the top-``k`` overlap."""
    k = min(k, ours.shape[1])
    per_query = [scipy.stats.spearmanr(a, b).statistic for a, b in zip(ours, theirs, strict=True)]
    top = [len(np.intersect1d(np.argsort(-a)[:k], np.argsort(-b)[:k])) / k for a, b in zip(ours, theirs, strict=True)]
    return {
        "pearson": float(scipy.stats.pearsonr(ours.ravel(), theirs.ravel()).statistic),
        "spearman": float(scipy.stats.spearmanr(ours.ravel(), theirs.ravel()).statistic),
        "spearman_per_query_mean": float(np.mean(per_query)),
        "spearman_per_query_min": float(np.min(per_query)),
        f"top{TOP_K}_overlap_mean": float(np.mean(top)),
        "max_abs_diff_relative": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
    }


# --------------------------------------------------------------------------- main


def damping_arg(text: str) -> float | None:
    """``--damping``: a non-negative number, or ``none`` for both libraries' per-layer heuristic."""
    if text.lower() == "none":
        return None
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"damping must be ≥ 0 or 'none'; got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"),
                        help="dataset (digits: sklearn 8×8 digits, for a seconds-long smoke run)")
    parser.add_argument("--n-train", type=int, metavar="N", default=None,
                        help="train on, fit factors on and score the first N training images; None = all")
    parser.add_argument("--queries", type=int, metavar="Q", default=51,
                        help="number of test images used as queries (the first Q)")
    parser.add_argument("--epochs", type=int, metavar="E", default=2,
                        help="training epochs of the CNN (Adam 1e-3, batch 128)")
    parser.add_argument("--batch-size", type=int, metavar="B", default=128,
                        help="batch size of the factor fit and of the training side of scoring, both libraries")
    parser.add_argument("--damping", type=damping_arg, metavar="D", default=1e-8,
                        help="constant damping added to the EK-FAC eigenvalues, both libraries (1e-8 is "
                             "kronfluence's default); 'none' = 0.1 × the mean eigenvalue of each layer")  # fmt: skip
    parser.add_argument("--skip-one-at-a-time", action="store_true",
                        help="do not time kronfluence scoring with one query per batch (Q passes over the data)")
    parser.add_argument("--no-warm-repeat", action="store_true",
                        help="do not repeat the jaxpoison calls to time them without compilation")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and training seed")
    parser.add_argument("--out", type=Path, metavar="FILE", required=True, help="where to write the JSON results")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    # kronfluence 1.0.1 builds a (disabled) torch.cuda.amp.GradScaler, deprecated in recent torch.
    warnings.filterwarnings("ignore", message=r".*GradScaler", category=FutureWarning)

    train_full, test = load_splits(args.dataset)
    n = len(train_full) if args.n_train is None else args.n_train
    if not 1 <= n <= len(train_full) or not 1 <= args.queries <= len(test):
        raise SystemExit(f"--n-train must lie in [1, {len(train_full)}] and --queries in [1, {len(test)}].")
    train_set = train_full.subset(range(n))
    queries = test.subset(range(args.queries))

    model = to_functional(create_model("cnn", train_set.image_shape, train_set.num_classes, seed=args.seed))
    result = train(model, train_set, adam_recipe(epochs=args.epochs), seed=args.seed, progress=False)
    model = model._replace(params=result.params, state=result.state)
    accuracy = evaluate(model.apply, model.params, model.state, test).accuracy
    print(f"trained the CNN on {n} images for {args.epochs} epochs: test accuracy {accuracy:.4f}")

    twin = torch_twin(model)
    logit_diff = check_logits_agree(model, twin, np.concatenate([train_set.images[:16], queries.images[:16]]),
                                    train_set)  # fmt: skip
    print(f"JAX and PyTorch logits agree (max |difference| {logit_diff:.2e})")

    jp = run_jaxpoison(model, train_set, queries, args)
    print(f"jaxpoison: fit {jp['fit_s']:.1f} s, score {jp['score_s']:.1f} s")
    with tempfile.TemporaryDirectory(prefix="vs_kronfluence_") as workdir:
        kf = run_kronfluence(twin, train_set, queries, args, workdir)
    print(f"kronfluence: fit {kf['fit_s']:.1f} s, score {kf['score_s']:.1f} s")

    env = environment()
    jax_total = jp["fit_s"] + jp["score_s"]
    report = {
        "dataset": args.dataset,
        "n_train": n,
        "queries": args.queries,
        "epochs": args.epochs,
        "test_accuracy": accuracy,
        "batch_size": args.batch_size,
        "damping": args.damping,
        "settings": (
            "EK-FAC, empirical Fisher, margin measurement, summed cross-entropy train loss, "
            "float64 eigendecomposition, all examples in covariance and Lambda"
        ),
        "logits_max_abs_diff": logit_diff,
        **agreement(jp["scores"], kf["scores"]),
        "jaxpoison_fit_s": jp["fit_s"],
        "jaxpoison_score_s": jp["score_s"],
        "jaxpoison_fit_warm_s": jp.get("fit_warm_s"),
        "jaxpoison_score_warm_s": jp.get("score_warm_s"),
        "jaxpoison_compile_note": "jaxpoison_fit_s and jaxpoison_score_s are first calls and include JIT compilation; "
        "the *_warm_s figures repeat the same calls in the same process (compiled code cached).",
        "kronfluence_fit_s": kf["fit_s"],
        "kronfluence_score_s": kf["score_s"],
        "kronfluence_score_one_query_at_a_time_s": kf.get("score_one_query_at_a_time_s"),
        "kronfluence_one_at_a_time_max_rel_diff": kf.get("one_at_a_time_max_rel_diff"),
        "speedup_fit": kf["fit_s"] / jp["fit_s"],
        "speedup_score": kf["score_s"] / jp["score_s"],
        "speedup_fit_plus_score": (kf["fit_s"] + kf["score_s"]) / jax_total,
        "speedup_fit_plus_score_vs_one_query_at_a_time": (
            (kf["fit_s"] + kf["score_one_query_at_a_time_s"]) / jax_total if "score_one_query_at_a_time_s" in kf
            else None
        ),
        "torch_threads": threads,
        "versions": {
            **{key: env[key] for key in ("python", "jax", "jaxlib", "flax", "numpy")},
            "torch": torch.__version__,
            "kronfluence": kronfluence.__version__,
            "scipy": scipy.__version__,
        },
        "machine": {key: env[key] for key in ("platform", "backend", "device_kind", "device_count")}
        | {"cpu_count": threads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(r: dict) -> None:
    def seconds(value):
        return "—" if value is None else f"{value:.1f}"

    rows = [
        ("", "jaxpoison", "kronfluence"),
        ("fit factors (s)", seconds(r["jaxpoison_fit_s"]), seconds(r["kronfluence_fit_s"])),
        (f"score, {r['queries']} queries in one batch (s)", seconds(r["jaxpoison_score_s"]),
         seconds(r["kronfluence_score_s"])),
        ("score, one query at a time (s)", "", seconds(r["kronfluence_score_one_query_at_a_time_s"])),
        ("fit, warm (s)", seconds(r["jaxpoison_fit_warm_s"]), ""),
        ("score, warm (s)", seconds(r["jaxpoison_score_warm_s"]), ""),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    damping = "0.1 × mean eigenvalue" if r["damping"] is None else f"{r['damping']:g}"
    print(f"\n{r['dataset']}, N = {r['n_train']}, Q = {r['queries']}, damping {damping}")
    for label, ours, theirs in rows:
        print(f"  {label:<{width}}  {ours:>10}  {theirs:>12}")
    print(f"  speedup (fit + score): {r['speedup_fit_plus_score']:.2f}×")
    print(f"  pearson {r['pearson']:.5f}, spearman {r['spearman']:.5f}, per-query spearman mean "
          f"{r['spearman_per_query_mean']:.5f} (min {r['spearman_per_query_min']:.5f}), "
          f"top-{TOP_K} overlap {r[f'top{TOP_K}_overlap_mean']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
