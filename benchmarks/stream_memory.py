"""Peak host memory of the factor fit and the scoring pass over a training set streamed from disk.

For each size N, a synthetic set of N 28×28 grayscale uint8 images (class-dependent blobs
plus noise, 10 classes) is written once as ``.npy`` shards of 50,000 images. A fresh
process then opens it as a :class:`~jaxpoison.data.StreamedDataset`, poisons 1 % of it with
a BadNet patch as an overlay (:func:`~jaxpoison.attacks.poison_streamed`), fits EK-FAC
factors of a small MLP (784-128-10) on it and scores ``--queries`` queries, and reports its
peak resident set size (``VmHWM``). Nothing proportional to N but the labels (4 bytes
per image) is held, so the peak should be flat in N: the goal is a 600k/60k ratio ≤ 1.2.

Usage:
  python benchmarks/stream_memory.py --sizes 60000,600000 --out benchmarks/results/stream_memory.json
  python benchmarks/stream_memory.py --sizes 2000,20000 --out /tmp/stream_memory.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxpoison.runinfo import environment

SHARD = 50_000
SHAPE = (28, 28, 1)


def write_synthetic(directory: Path, n: int, seed: int = 0) -> Path:
    """N class-dependent uint8 images as shards (skipped if ``directory`` already holds them)."""
    from jaxpoison.data import write_npy_shards

    if (directory / "shards.json").is_file() and (directory / "labels.npy").is_file():
        if len(np.load(directory / "labels.npy", mmap_mode="r")) == n:
            return directory
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    yy, xx = np.mgrid[0:28, 0:28]
    centres = [(6 + 4 * (c % 4), 6 + 5 * (c // 4)) for c in range(10)]
    blobs = np.stack([np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 18.0) for y, x in centres])  # [10, 28, 28]

    def chunks():
        for start in range(0, n, SHARD):
            part = labels[start : start + SHARD]
            noise = rng.normal(0.0, 0.15, (part.size, 28, 28))
            pixels = np.clip(blobs[part] + noise, 0.0, 1.0)
            yield np.round(pixels * 255).astype(np.uint8)[..., None]

    return write_npy_shards(directory, chunks(), labels=labels)


def rss() -> int:
    """This process's peak resident set size in bytes.

    Linux's ``VmHWM`` is the peak of this program's own memory; ``ru_maxrss`` would also
    count the parent's size at the fork before ``exec``, and the parent wrote the shards.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_size(directory: Path, queries: int, batch_size: int) -> dict:
    """Runs in the child process: open, poison, fit and score; returns its peak RSS after each phase."""
    from jaxpoison.attacks import PoisonConfig, badnet_pixels, poison_streamed
    from jaxpoison.data import load_npy_shards
    from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
    from jaxpoison.models import create_model, to_functional

    streamed = load_npy_shards(directory, [str(c) for c in range(10)], mean=0.2, std=0.3, name="synthetic")
    poisoned = poison_streamed(streamed, badnet_pixels(SHAPE), PoisonConfig(target=0, rate=0.01, seed=0)).dataset
    model = to_functional(create_model("mlp", SHAPE, 10), poisoned.mean, poisoned.std)
    after_open = rss()
    t0 = time.perf_counter()
    content_hash = poisoned.content_hash
    hash_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    factors = fit_factors(model, poisoned, FactorConfig(batch_size=batch_size), progress=False)
    fit_s = time.perf_counter() - t0
    after_fit = rss()
    query_rows = np.arange(queries)
    t0 = time.perf_counter()
    scores = pairwise_scores(model, poisoned, poisoned.images[query_rows], poisoned.labels[query_rows], factors,
                             ScoreConfig(batch_size=batch_size), progress=False)  # fmt: skip
    score_s = time.perf_counter() - t0
    return {"n": len(poisoned), "disk_bytes": sum(p.stat().st_size for p in directory.glob("*.npy")),
            "content_hash": content_hash, "scores_shape": list(np.shape(scores.values)),
            "peak_after_open": after_open, "peak_after_fit": after_fit, "peak": rss(),
            "hash_seconds": hash_s, "fit_seconds": fit_s, "score_seconds": score_s}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="60000,600000")
    parser.add_argument("--queries", type=int, default=51)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--data-dir", default=None, help="where the synthetic shards live (default: a temp dir)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_size(Path(args.child), args.queries, args.batch_size)))
        return {}
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="jaxpoison-stream-"))
    results = []
    for n in sizes:
        directory = write_synthetic(root / f"n{n}", n)
        command = [sys.executable, __file__, "--child", str(directory), "--queries", str(args.queries),
                   "--batch-size", str(args.batch_size), "--out", "-"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"size {n} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"N={n:,}: peak RSS {results[-1]['peak'] / 2**20:,.0f} MiB (disk {results[-1]['disk_bytes'] / 2**20:,.0f}"
              f" MiB), fit {results[-1]['fit_seconds']:.1f} s, score {results[-1]['score_seconds']:.1f} s", flush=True)
    report = {"settings": {"sizes": sizes, "queries": args.queries, "batch_size": args.batch_size, "model": "mlp",
                           "image_shape": list(SHAPE), "poison_rate": 0.01, "shard_images": SHARD},
              "results": results, "peak_ratio_largest_over_smallest": results[-1]["peak"] / results[0]["peak"],
              "environment": environment()}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"peak ratio {sizes[-1]:,} / {sizes[0]:,}: {report['peak_ratio_largest_over_smallest']:.3f}")
    return report


if __name__ == "__main__":
    main()
