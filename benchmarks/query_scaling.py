"""How scoring time grows with the number of queries (one pass over the training set).

Fits EK-FAC factors once, then times ``pairwise_scores`` for Q = 1, 8, 51, 256
queries against the same training set. Compilation is excluded from the timed
passes (each Q is first compiled on one batch of the same shape) and reported
separately. The Δ-Influence setting is Q = 51 (one poisoned test point and 50
transformed, relabelled copies): ``ratio_51_over_1`` is the price of those extra
50 queries relative to scoring one.

Usage:
  python benchmarks/query_scaling.py --out runs/query_scaling.json                 # Fashion-MNIST CNN, 60k
  python benchmarks/query_scaling.py --dataset digits --out /tmp/q.json            # seconds-long smoke run
  python benchmarks/query_scaling.py --model resnet18 --synthetic cifar --out q.json  # paper scale (GPU)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxpoison.data import load_dataset, synthetic_dataset
from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
from jaxpoison.models import count_params, create_model, to_functional
from jaxpoison.runinfo import environment


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--synthetic", choices=("cifar",), default=None, help="use CIFAR-shaped synthetic data")
    parser.add_argument("--model", default="cnn", choices=("cnn", "resnet18"))
    parser.add_argument("--n-train", type=int, default=None, help="default: the whole training set (50k synthetic)")
    parser.add_argument("--queries", default="1,8,51,256")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.synthetic:
        train = synthetic_dataset(args.n_train or 50_000)
    else:
        train = load_dataset(args.dataset, "train")
        if args.n_train:
            train = train.subset(range(min(args.n_train, len(train))))
    test_pool = train.subset(range(min(len(train), 512)))
    model = to_functional(create_model(args.model, train.image_shape, train.num_classes))
    factor_config = FactorConfig(strategy="ekfac", fisher="true", batch_size=args.batch_size, on_untracked="ignore")
    t0 = time.perf_counter()
    factors = fit_factors(model, train, factor_config, progress=False)
    fit_s = time.perf_counter() - t0

    config = ScoreConfig(measurement="margin", damping=1e-8, batch_size=args.batch_size, on_untracked="ignore")
    # Compilation depends only on shapes: warm up on one batch, with factors fitted on that batch.
    warm_set = train.subset(range(args.batch_size))
    warm_factors = fit_factors(model, warm_set, factor_config, progress=False)
    results = {}
    for q in (int(v) for v in args.queries.split(",")):
        idx = np.arange(q) % len(test_pool)
        images, labels = test_pool.images[idx], test_pool.labels[idx]
        t0 = time.perf_counter()
        pairwise_scores(model, warm_set, images, labels, warm_factors, config, progress=False)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = pairwise_scores(model, train, images, labels, factors, config, progress=False)
        seconds = time.perf_counter() - t0
        assert scores.values.shape == (q, len(train)) and np.all(np.isfinite(scores.values))
        results[str(q)] = {"seconds": seconds, "warmup_and_compile_seconds": compile_s}
        print(f"Q = {q:4d}: {seconds:8.2f} s  ({len(train) / seconds:,.0f} training examples / s)")

    out = {
        "model": args.model,
        "num_params": count_params(model.params),
        "data": "synthetic cifar-shaped" if args.synthetic else args.dataset,
        "n_train": len(train),
        "batch_size": args.batch_size,
        "fit_seconds": fit_s,
        "scoring": results,
        "environment": environment(),
    }
    if "1" in results and "51" in results:
        out["ratio_51_over_1"] = results["51"]["seconds"] / results["1"]["seconds"]
        print(f"ratio_51_over_1 = {out['ratio_51_over_1']:.2f}   (factor fit {fit_s:.1f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
