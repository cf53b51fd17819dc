"""The scoring pass side by side: full rank, low-rank queries, bfloat16, one query, and the floor.

One run, one trained model, one set of EK-FAC factors, and every variant timed on the same
training set with compilation excluded (each variant is first compiled on one batch):

* ``floor``: one forward and backward pass over the training set (the summed loss's
  parameter gradient per batch), what any scoring pass must at least do;
* ``full``: the exact float32 scores for Q queries (the reference for the agreement columns);
* ``rank_R``: ``ScoreConfig(query_rank=R)`` for each ``--ranks`` entry;
* ``bfloat16``: ``ScoreConfig(dtype="bfloat16")`` (contractions in bfloat16, float32 sums);
* ``one_query``: the full pass for the first query alone (``ratio_q_over_1`` is the price of
  the other Q − 1 queries);
* TRAK (``--trak-dim k``) with the dense Gaussian projection and with the Kronecker one, and
  the agreement of their scores.

Agreement with ``full``: Pearson over the whole matrix, Spearman per query (mean and min) and
the overlap of each query's top 100. The factor fit is timed in float32 and in bfloat16, and
the bfloat16 factors' full-rank scores are compared with the float32 ones.

Usage:
  python benchmarks/scoring.py --out benchmarks/results/scoring_fmnist_60k.json   # Fashion-MNIST CNN, 60k, Q = 51
  python benchmarks/scoring.py --dataset digits --epochs 2 --out /tmp/scoring.json  # a one-minute smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import numpy as np
from scipy.stats import pearsonr, spearmanr

from jaxpoison.data import Dataset, load_dataset
from jaxpoison.influence import FactorConfig, ScoreConfig, TrakConfig, fit_factors, pairwise_scores, trak_scores
from jaxpoison.influence.losses import cross_entropy
from jaxpoison.influence.stream import reduce_dataset
from jaxpoison.models import count_params, create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.sharding import data_mesh
from jaxpoison.training import TrainRecipe, train


@functools.partial(jax.jit, donate_argnums=0)
def _gradient_step(acc, model, x, y, m):
    """Add the masked summed loss's parameter gradient of one batch: a forward and a backward pass."""

    def loss(params):
        logits = model.replace(params=params)(x)
        return (cross_entropy(logits, y) * m).sum()

    grads = jax.grad(loss)(model.params)
    return jax.tree.map(lambda a, g: a + g, acc, grads)


def floor_seconds(model, data: Dataset, batch_size: int) -> float:
    mesh = data_mesh()
    init = jax.tree.map(np.zeros_like, model.params)
    run = functools.partial(reduce_dataset, lambda acc, b, x, y, m: _gradient_step(acc, model, x, y, m))
    jax.block_until_ready(run(init, data.first(batch_size), batch_size, mesh, desc="warm-up", progress=False))
    t0 = time.perf_counter()
    jax.block_until_ready(run(init, data, batch_size, mesh, desc="floor", progress=False))
    return time.perf_counter() - t0


def timed_scores(model, train_set, warm_set, images, labels, factors, warm_factors, config) -> tuple[np.ndarray, float]:
    """Scores and the seconds of the pass, after compiling on one batch of the same shapes."""
    pairwise_scores(model, warm_set, images, labels, warm_factors, config, progress=False)
    t0 = time.perf_counter()
    values = pairwise_scores(model, train_set, images, labels, factors, config, progress=False).values
    return values, time.perf_counter() - t0


def agreement(got: np.ndarray, want: np.ndarray, top: int = 100) -> dict:
    per_query = [spearmanr(g, w)[0] for g, w in zip(got, want, strict=True)]
    overlap = [len(np.intersect1d(np.argsort(-g)[:top], np.argsort(-w)[:top])) / top
               for g, w in zip(got, want, strict=True)]  # fmt: skip
    return {"pearson": float(pearsonr(got.ravel(), want.ravel())[0]), "spearman_mean": float(np.mean(per_query)),
            "spearman_min": float(np.min(per_query)), f"top{top}_overlap_mean": float(np.mean(overlap))}  # fmt: skip


def trak_side_by_side(model, train_set, warm_set, images, labels, args) -> dict:
    """TRAK with the dense Gaussian and with the Kronecker projection: seconds and agreement.

    Two draws of the same random projection disagree too, so the dense projection is also run
    with a second seed: ``dense_vs_dense`` is the agreement any other projection can hope for.
    """
    result, values = {}, {}
    for name, projection, seed in (("dense", "dense", 0), ("kronecker", "kronecker", 0), ("dense_seed1", "dense", 1)):
        config = TrakConfig(projection_dim=args.trak_dim, batch_size=args.batch_size, projection=projection,
                            seed=seed, on_untracked="ignore")  # fmt: skip
        trak_scores(model, warm_set, images, labels, config, progress=False)  # compile
        t0 = time.perf_counter()
        values[name] = trak_scores(model, train_set, images, labels, config, progress=False).values
        result[f"{name}_seconds"] = time.perf_counter() - t0
        print(f"TRAK {name}, k = {args.trak_dim}: {result[f'{name}_seconds']:.1f} s", flush=True)
    result["kronecker_vs_dense"] = agreement(values["kronecker"], values["dense"])
    result["dense_vs_dense"] = agreement(values["dense_seed1"], values["dense"])
    result["speedup"] = result["dense_seconds"] / result["kronecker_seconds"]
    print(f"TRAK agreement: Kronecker vs dense {result['kronecker_vs_dense']}, dense vs dense (another seed) "
          f"{result['dense_vs_dense']}", flush=True)  # fmt: skip
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--n-train", type=int, default=None, help="default: the whole training set")
    parser.add_argument("--queries", type=int, default=51)
    parser.add_argument("--ranks", default="8,16,32,64")
    parser.add_argument("--epochs", type=int, default=1, help="Adam epochs of the model that is scored")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--trak-dim", type=int, default=256, help="TRAK's k (0: skip the TRAK comparison)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    train_set = load_dataset(args.dataset, "train")
    if args.n_train:
        train_set = train_set.first(args.n_train)
    test = load_dataset(args.dataset, "test")
    images, labels = test.images[: args.queries], test.labels[: args.queries]
    model = to_functional(create_model("cnn", train_set.image_shape, train_set.num_classes), train_set.mean,
                          train_set.std)  # fmt: skip
    t0 = time.perf_counter()
    model = train(model, train_set, TrainRecipe(epochs=args.epochs, batch_size=128), progress=False).model
    train_s = time.perf_counter() - t0
    warm_set = train_set.first(args.batch_size)
    base = ScoreConfig(measurement="margin", damping=args.damping, batch_size=args.batch_size, on_untracked="ignore")
    out = {"dataset": args.dataset, "n_train": len(train_set), "queries": args.queries,
           "batch_size": args.batch_size, "num_params": count_params(model.params), "train_seconds": train_s,
           "environment": environment()}  # fmt: skip

    fits = {}
    for dtype in (None, "bfloat16"):
        config = FactorConfig(fisher="true", batch_size=args.batch_size, on_untracked="ignore", dtype=dtype)
        fit_factors(model, warm_set, config, progress=False)  # compile
        t0 = time.perf_counter()
        fits[dtype] = fit_factors(model, train_set, config, progress=False)
        out[f"fit_seconds_{dtype or 'float32'}"] = time.perf_counter() - t0
    factors = fits[None]
    warm_factors = fit_factors(model, warm_set, FactorConfig(batch_size=args.batch_size, on_untracked="ignore"),
                               progress=False)  # fmt: skip

    out["floor_seconds"] = floor_seconds(model, train_set, args.batch_size)
    print(f"floor (forward + backward over {len(train_set)}): {out['floor_seconds']:.1f} s", flush=True)
    full, seconds = timed_scores(model, train_set, warm_set, images, labels, factors, warm_factors, base)
    variants = {"full": {"seconds": seconds}}
    print(f"full rank, Q = {args.queries}: {seconds:.1f} s", flush=True)
    for rank in (int(r) for r in args.ranks.split(",")):
        config = dataclasses.replace(base, query_rank=rank)
        values, seconds = timed_scores(model, train_set, warm_set, images, labels, factors, warm_factors, config)
        variants[f"rank_{rank}"] = {"seconds": seconds, **agreement(values, full)}
        print(f"rank {rank}: {seconds:.1f} s, {variants[f'rank_{rank}']}", flush=True)
    config = dataclasses.replace(base, dtype="bfloat16")
    values, seconds = timed_scores(model, train_set, warm_set, images, labels, factors, warm_factors, config)
    variants["bfloat16"] = {"seconds": seconds, **agreement(values, full)}
    print(f"bfloat16: {seconds:.1f} s, {variants['bfloat16']}", flush=True)
    _, seconds = timed_scores(model, train_set, warm_set, images[:1], labels[:1], factors, warm_factors, base)
    variants["one_query"] = {"seconds": seconds}
    bf16_factor_scores = pairwise_scores(model, train_set, images, labels, fits["bfloat16"], base, progress=False)
    out["bfloat16_factors_agreement"] = agreement(bf16_factor_scores.values, full)

    if args.trak_dim:
        out["trak"] = trak_side_by_side(model, train_set, warm_set, images, labels, args)

    out["variants"] = variants
    out["ratio_q_over_1"] = variants["full"]["seconds"] / variants["one_query"]["seconds"]
    out["ratio_over_floor"] = {k: v["seconds"] / out["floor_seconds"] for k, v in variants.items()}
    print(json.dumps({k: out[k] for k in ("ratio_q_over_1", "ratio_over_floor", "bfloat16_factors_agreement")},
                     indent=1))  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
