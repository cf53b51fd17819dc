"""Peak host memory of the factor fit and the scoring pass as the training set grows.

Each size runs in a fresh process, which loads the training set, fits EK-FAC factors and
scores ``--queries`` queries, and reports its peak resident set size (``ru_maxrss``). The
training images themselves are part of that peak and grow with N, so the JSON also gives the
peak minus the images' bytes, which is what the passes add. They stream fixed-size batches,
so that part should be flat in N. XLA's own figures per step (``jaxpoison plan``) do not
depend on N at all.

Usage:
  python benchmarks/memory.py --sizes 15000,30000,60000 --out benchmarks/results/memory_fmnist.json
  python benchmarks/memory.py --dataset digits --sizes 400,800,1600 --out /tmp/memory.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from jaxpoison.runinfo import environment


def one_size(dataset: str, n: int, queries: int, batch_size: int) -> dict:
    """Runs in the child process: fit and score on the first ``n`` images; returns its peak RSS."""
    import time

    from jaxpoison.data import load_dataset
    from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
    from jaxpoison.models import create_model, to_functional

    train = load_dataset(dataset, "train").first(n)
    test = load_dataset(dataset, "test")
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = to_functional(create_model("cnn", train.image_shape, train.num_classes), train.mean, train.std)
    t0 = time.perf_counter()
    factors = fit_factors(model, train, FactorConfig(batch_size=batch_size, on_untracked="ignore"), progress=False)
    fit_s = time.perf_counter() - t0
    after_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    pairwise_scores(model, train, test.images[:queries], test.labels[:queries], factors,
                    ScoreConfig(batch_size=batch_size, on_untracked="ignore"), progress=False)  # fmt: skip
    score_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    images = int(train.images.nbytes + train.labels.nbytes)
    return {"n": n, "image_bytes": images, "peak_after_load": after_load, "peak_after_fit": after_fit,
            "peak": peak, "peak_minus_images": peak - images, "fit_seconds": fit_s,
            "score_seconds": score_s}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--sizes", default="15000,30000,60000")
    parser.add_argument("--queries", type=int, default=51)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_size(args.dataset, args.child, args.queries, args.batch_size)))
        return {}
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        command = [sys.executable, __file__, "--dataset", args.dataset, "--queries", str(args.queries),
                   "--batch-size", str(args.batch_size), "--child", str(n)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"N = {n}: peak {r['peak'] / 2**20:,.0f} MiB, without the images "
              f"{r['peak_minus_images'] / 2**20:,.0f} MiB (fit {r['fit_seconds']:.0f} s, score "
              f"{r['score_seconds']:.0f} s)", flush=True)  # fmt: skip
    extra = [r["peak_minus_images"] for r in rows]
    ratio = extra[-1] / extra[0]
    out = {"dataset": args.dataset, "queries": args.queries, "batch_size": args.batch_size, "sizes": rows,
           "ratio_peak_minus_images_largest_over_smallest": ratio, "environment": environment()}  # fmt: skip
    print(f"peak without the images, largest N over smallest: {ratio:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
