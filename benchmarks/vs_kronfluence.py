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

``--victim badnet`` scores a backdoored model instead of a clean one: 1 % of the ``N``
images (``--poison-rate``) get jaxpoison's BadNet trigger and label 0, the CNN is trained
with the Fashion-MNIST presets' recipe (Adam 1e-3, batch 128, 5 epochs, the last at lr/10),
and the queries are the first ``Q`` triggered test images of other classes, measured against
the target, as Δ-Influence queries them. Such poisons are fitted at large margins, where the
two libraries' cross-entropy gradients differ: jaxpoison writes the loss as
``softplus(-margin)``, while PyTorch's float32 log-softmax backward rounds ``p(target)`` to 1
and returns a label component of exactly 0. The JSON then also holds the poisons' margin
distribution, the share of poisons (and of clean points) whose PyTorch label component is 0,
agreement restricted to the poison columns (split by that zero), and an explanation. With
``--kronfluence-softplus-ce`` kronfluence is run a second time with jaxpoison's form of the
loss, which isolates the cross-entropy numerics from everything else.

Usage:
  python benchmarks/vs_kronfluence.py --dataset digits --n-train 1437 --queries 8 --out /tmp/vsk_digits.json
  python benchmarks/vs_kronfluence.py --n-train 10000 --queries 51 --out runs/vs_kronfluence_10k.json
  python benchmarks/vs_kronfluence.py --queries 51 --out runs/vs_kronfluence.json   # all 60,000 images
  # 10,000 images need ~15 epochs before poisons saturate (5 epochs: max poison margin 14.7, none zeroed;
  # 15 epochs: median 12.1, 29 % zeroed); check with --diagnostics-only before a long run.
  python benchmarks/vs_kronfluence.py --victim badnet --n-train 10000 --epochs 15 --queries 51 \
      --skip-one-at-a-time --kronfluence-softplus-ce --out runs/vs_kronfluence_badnet_10k.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import kronfluence
import numpy as np
import scipy
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from flax import nnx
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from torch import nn

from jaxpoison.attacks import PoisonConfig, poison_dataset
from jaxpoison.data import Dataset, load_splits
from jaxpoison.experiments.config import AttackConfig
from jaxpoison.experiments.presets import CNN_ADAM
from jaxpoison.experiments.victim import make_trigger
from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores
from jaxpoison.influence.losses import cross_entropy, margin_measurement
from jaxpoison.models import FunctionalModel, create_model, to_functional
from jaxpoison.runinfo import environment
from jaxpoison.training import adam_recipe, evaluate, train

TOP_K = 100
TARGET = 0  # the BadNet victim's target class, as in the Fashion-MNIST presets
# Beyond this margin 1 + e^-margin rounds to 1 in float32 (e^-margin < 2^-24), so a log-softmax
# computes log p(y) = 0 exactly; the measured share of exact zeros is what the report relies on.
FLOAT32_SATURATION_MARGIN = float(24 * np.log(2.0))
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
    jax_logits = np.asarray(model(images))  # the JAX model normalises its own inputs
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


class SoftplusMarginTask(MarginTask):
    """:class:`MarginTask` with the cross-entropy written as jaxpoison writes it, ``softplus(-margin)``."""

    def compute_train_loss(self, batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
        inputs, labels = batch
        logits = model(inputs)
        if sample:
            with torch.no_grad():
                labels = torch.multinomial(F.softmax(logits, dim=-1), 1).flatten()
        true_class = F.one_hot(labels, logits.shape[-1]).bool()
        margin = logits[true_class] - logits.masked_fill(true_class, float("-inf")).logsumexp(dim=-1)
        return F.softplus(-margin).sum()


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
    if args.fast_rank is not None or args.fast_dtype is not None:  # the fast settings, end to end
        fast_factors, out["fast_fit_s"] = timed(fit_factors, model, train_set,
                                                dataclasses.replace(factor_config, dtype=args.fast_dtype),
                                                progress=False)  # fmt: skip
        fast_config = dataclasses.replace(score_config, query_rank=args.fast_rank, dtype=args.fast_dtype)
        fast, out["fast_score_s"] = timed(lambda: pairwise_scores(model, train_set, queries.images, queries.labels,
                                                                  fast_factors, fast_config, progress=False).values)
        out["fast_scores"] = np.asarray(fast)
    return out


def run_kronfluence(twin: TorchCNN, train_set: Dataset, queries: Dataset, args, workdir: str,
                    task: Task | None = None, one_at_a_time: bool = True) -> dict:  # fmt: skip
    task = MarginTask() if task is None else task
    tracked = prepare_model(twin, task)
    analyzer = Analyzer(analysis_name=f"vs_jaxpoison_{type(task).__name__}", model=tracked, task=task, cpu=True,
                        disable_tqdm=True, output_dir=workdir, log_level=logging.WARNING)  # fmt: skip
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
    if one_at_a_time and not args.skip_one_at_a_time:
        out["score_one_query_at_a_time_s"] = score("one_at_a_time", 1)
        single = analyzer.load_pairwise_scores("one_at_a_time")["all_modules"].double().numpy()
        out["one_at_a_time_max_rel_diff"] = float(np.abs(single - out["scores"]).max() / np.abs(out["scores"]).max())
    return out


# --------------------------------------------------------------------------- the victim


def build_victim(train_set: Dataset, test: Dataset, args) -> tuple[Dataset, np.ndarray, Dataset, object, object]:
    """``(training set, poison indices, queries, recipe, trigger)`` for ``--victim``.

    The clean victim is the original benchmark: the first ``Q`` test images with their labels
    as queries. The BadNet victim poisons ``--poison-rate`` of the training set toward
    :data:`TARGET` and queries the first ``Q`` triggered test images of the other classes.
    """
    if args.victim == "clean":
        return train_set, np.zeros(0, np.int64), test.subset(range(args.queries)), adam_recipe(epochs=args.epochs), None
    attack = AttackConfig("badnet", target=TARGET, rate=args.poison_rate)
    trigger = make_trigger(attack, train_set, None, args.seed, False)  # the clean model is only used by "smooth"
    poisoned = poison_dataset(train_set, trigger, PoisonConfig(target=TARGET, rate=args.poison_rate, seed=args.seed))
    others = np.flatnonzero(test.labels != TARGET)[: args.queries]
    queries = test.subset(others)
    queries = queries.replace(images=np.clip(np.asarray(trigger.apply(queries.images), np.float32), 0.0, 1.0),
                              labels=np.full(len(queries), TARGET, queries.labels.dtype))  # fmt: skip
    # The presets' recipe, with the lr/10 step kept on the last epoch when --epochs changes.
    recipe = CNN_ADAM.recipe.replace(epochs=args.epochs, milestones=(args.epochs - 1,))
    return poisoned.dataset, np.asarray(poisoned.poison_indices, np.int64), queries, recipe, trigger


def logits_of(model: FunctionalModel, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """The JAX model's float32 logits of pixel-space ``images`` (the model normalises them)."""
    chunks = [model(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate([np.asarray(c) for c in chunks])


def torch_label_gradient(twin: TorchCNN, images: np.ndarray, labels: np.ndarray, data: Dataset,
                         batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """PyTorch's float32 gradient of ``F.cross_entropy`` w.r.t. the logits: ``([n] label component, [n, C] all)``.

    This is the gradient kronfluence propagates into the network for every training point.
    """
    rows = []
    for i in range(0, len(images), batch):
        with torch.no_grad():
            logits = twin(to_nchw(images[i : i + batch], data))
        logits.requires_grad_(True)
        F.cross_entropy(logits, torch.from_numpy(labels[i : i + batch].astype(np.int64)), reduction="sum").backward()
        rows.append(logits.grad.numpy())
    grads = np.concatenate(rows)
    return grads[np.arange(len(labels)), labels], grads


def exact_logit_gradient(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``softmax - onehot`` in float64, with ``1 - p(y)`` taken as ``sum of the other p`` (no cancellation)."""
    z = logits.astype(np.float64)
    p = np.exp(z - scipy.special.logsumexp(z, axis=1, keepdims=True))
    rows = np.arange(len(labels))
    p[rows, labels] = 0.0
    p[rows, labels] = -p.sum(axis=1)
    return p


def victim_diagnostics(model: FunctionalModel, twin: TorchCNN, train_set: Dataset, poisons: np.ndarray,
                       test: Dataset, trigger) -> dict:  # fmt: skip
    """Attack success, margins of poisons and clean points, and which libraries zero the label gradient."""
    clean = np.setdiff1d(np.arange(len(train_set)), poisons)
    logits = logits_of(model, train_set.images)
    labels = train_set.labels.astype(np.int64)
    margins = -np.asarray(margin_measurement(logits, labels), np.float64)
    torch_label, torch_grad = torch_label_gradient(twin, train_set.images, labels, train_set)
    jax_grad = np.asarray(jax.vmap(jax.grad(cross_entropy))(jnp.asarray(logits), jnp.asarray(labels)))
    jax_label = jax_grad[np.arange(len(labels)), labels]
    exact = exact_logit_gradient(logits, labels)

    def cosine_on_zeroed_poisons(grad):
        on = poisons[zero[poisons]]
        if not on.size:
            return None
        a, b = grad[on], exact[on]
        return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    zero = torch_label == 0.0
    others = test.subset(np.flatnonzero(test.labels != TARGET))
    triggered = np.clip(np.asarray(trigger.apply(others.images), np.float32), 0.0, 1.0)
    success = float(np.mean(np.argmax(logits_of(model, triggered), 1) == TARGET))

    def quantiles(values):
        qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
        return {f"q{round(100 * q):02d}": float(np.quantile(values, q)) for q in qs} | {"mean": float(values.mean())}

    def share(mask, where):
        return float(mask[where].mean()) if where.size else None

    return {
        "n_poisons": int(poisons.size),
        "attack_success_rate": success,
        "poisons_fitted_share": share(np.argmax(logits, 1) == labels, poisons),
        "poison_margin": quantiles(margins[poisons]),
        "clean_margin": quantiles(margins[clean]),
        "saturation_margin_float32": FLOAT32_SATURATION_MARGIN,
        "poisons_above_saturation_margin_share": share(margins > FLOAT32_SATURATION_MARGIN, poisons),
        "torch_label_grad_zero_share_poisons": share(zero, poisons),
        "torch_label_grad_zero_share_clean": share(zero, clean),
        "jaxpoison_label_grad_zero_share_poisons": share(jax_label == 0.0, poisons),
        "jaxpoison_label_grad_zero_share_clean": share(jax_label == 0.0, clean),
        "cosine_to_exact_logit_grad_poisons_with_zero_label_torch": cosine_on_zeroed_poisons(torch_grad),
        "cosine_to_exact_logit_grad_poisons_with_zero_label_jaxpoison": cosine_on_zeroed_poisons(jax_grad),
        "_torch_zero_label_grad": zero,  # dropped before writing the JSON
    }


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


def column_agreement(ours: np.ndarray, theirs: np.ndarray, columns: np.ndarray) -> dict | None:
    """Agreement of the score matrices restricted to training points ``columns`` (e.g. the poisons).

    ``top_k`` is a tenth of the columns (at least 1): the overlap of each library's most
    supporting poisons per query.
    """
    if columns.size < 2:
        return None
    a, b = ours[:, columns], theirs[:, columns]
    k = max(1, columns.size // 10)
    per_query = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    top = [len(np.intersect1d(np.argsort(-x)[:k], np.argsort(-y)[:k])) / k for x, y in zip(a, b, strict=True)]
    return {
        "n": int(columns.size),
        "pearson": float(scipy.stats.pearsonr(a.ravel(), b.ravel()).statistic),
        "spearman": float(scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic),
        "spearman_per_query_mean": float(np.nanmean(per_query)),
        "spearman_per_query_min": float(np.nanmin(per_query)),
        "top_k": k,
        "top_k_overlap_mean": float(np.mean(top)),
        "max_abs_diff_relative": float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)),
        "jaxpoison_mean_score": float(a.mean()),
        "kronfluence_mean_score": float(b.mean()),
        "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
    }


def poison_recall(scores: np.ndarray, poisons: np.ndarray) -> float:
    """Mean over queries of the share of poisons among the ``|poisons|`` highest-scored training points."""
    k = poisons.size
    return float(np.mean([np.isin(np.argsort(-row)[:k], poisons).mean() for row in scores]))


def poison_report(jp: np.ndarray, kf: np.ndarray, poisons: np.ndarray, zero: np.ndarray) -> dict:
    """Agreement on the poison columns, overall and split by PyTorch's zero label gradient."""
    return {
        "agreement_poisons": column_agreement(jp, kf, poisons),
        "agreement_poisons_torch_label_grad_zero": column_agreement(jp, kf, poisons[zero[poisons]]),
        "agreement_poisons_torch_label_grad_nonzero": column_agreement(jp, kf, poisons[~zero[poisons]]),
        "agreement_clean": column_agreement(jp, kf, np.setdiff1d(np.arange(jp.shape[1]), poisons)),
        "poison_recall_top_p_jaxpoison": poison_recall(jp, poisons),
        "poison_recall_top_p_kronfluence": poison_recall(kf, poisons),
    }


def explain(diag: dict, report: dict, softplus: dict | None) -> str:
    """A plain-words reading of the poison diagnostics and agreement, for the JSON summary."""
    zero = diag["torch_label_grad_zero_share_poisons"]
    median = diag["poison_margin"]["q50"]
    overall, on_poisons = report["spearman"], report["agreement_poisons"]
    text = (f"Poisons are fitted at median margin {median:.1f} (saturation in float32 near "
            f"{FLOAT32_SATURATION_MARGIN:.1f}); PyTorch's float32 cross-entropy backward returns a label-gradient "
            f"component of exactly 0 for {zero:.1%} of them (jaxpoison: "
            f"{diag['jaxpoison_label_grad_zero_share_poisons']:.1%}). ")  # fmt: skip
    if zero > 0:
        text += ("For those points kronfluence's training gradient is softmax - onehot with p(y) rounded to 1: the "
                 "label component vanishes while the other components stay ~e^-margin, so the gradient loses "
                 "its largest component and turns by at least 45 degrees (mean cosine to the exact logit gradient "
                 f"{diag['cosine_to_exact_logit_grad_poisons_with_zero_label_torch']:.3f}, jaxpoison's "
                 f"{diag['cosine_to_exact_logit_grad_poisons_with_zero_label_jaxpoison']:.6f}). jaxpoison's "
                 "softplus(-margin) keeps that component, -(1 - p(y)), exact. The same gradients enter the empirical "
                 "Fisher factors and the training side of every score. ")  # fmt: skip
        split = [report[f"agreement_poisons_torch_label_grad_{kind}"] for kind in ("zero", "nonzero")]
        split = ["n/a" if s is None else f"{s['spearman']:.4f} over {s['n']}" for s in split]
        text += (f"Spearman on poison columns: {on_poisons['spearman']:.4f} (zero label gradient: {split[0]}; "
                 f"non-zero: {split[1]}), against {overall:.4f} over all points. ")  # fmt: skip
    else:
        text += "No poison's label gradient is zeroed at this training budget, so the loss numerics cannot differ. "
    if softplus is not None:
        text += (f"With kronfluence given jaxpoison's softplus(-margin) loss, Spearman is {softplus['spearman']:.4f} "
                 f"overall and {softplus['agreement_poisons']['spearman']:.4f} on poisons: what remains is the "
                 "rest of the computation (float32 gradients, factor algebra, damping).")  # fmt: skip
    return text


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
    parser.add_argument("--epochs", type=int, metavar="E", default=None,
                        help="training epochs of the CNN (Adam 1e-3, batch 128); default 2 for the clean victim, "
                             "5 (the last at lr/10) for --victim badnet")  # fmt: skip
    parser.add_argument("--victim", default="clean", choices=("clean", "badnet"),
                        help="badnet: poison --poison-rate of the training set with jaxpoison's BadNet trigger "
                             f"toward class {TARGET} and query triggered test images")  # fmt: skip
    parser.add_argument("--poison-rate", type=float, metavar="R", default=0.01,
                        help="share of the N training images poisoned by --victim badnet")
    parser.add_argument("--kronfluence-softplus-ce", action="store_true",
                        help="run kronfluence a second time with the cross-entropy written as softplus(-margin), "
                             "jaxpoison's form (isolates the loss numerics)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, metavar="B", default=128,
                        help="batch size of the factor fit and of the training side of scoring, both libraries")
    parser.add_argument("--damping", type=damping_arg, metavar="D", default=1e-8,
                        help="constant damping added to the EK-FAC eigenvalues, both libraries (1e-8 is "
                             "kronfluence's default); 'none' = 0.1 × the mean eigenvalue of each layer")  # fmt: skip
    parser.add_argument("--skip-one-at-a-time", action="store_true",
                        help="do not time kronfluence scoring with one query per batch (Q passes over the data)")
    parser.add_argument("--no-warm-repeat", action="store_true",
                        help="do not repeat the jaxpoison calls to time them without compilation")
    parser.add_argument("--diagnostics-only", action="store_true",
                        help="--victim badnet: train and print the poison diagnostics (margins, zeroed label "
                             "gradients), then stop; a cheap way to choose --epochs")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and training seed")
    parser.add_argument("--fast-rank", type=int, default=None, metavar="R",
                        help="also time jaxpoison with rank-R query factors (ScoreConfig.query_rank), end to end")
    parser.add_argument("--fast-dtype", choices=("float32", "bfloat16"), default=None,
                        help="also time jaxpoison with this contraction dtype for factors and scores, end to end")
    parser.add_argument("--out", type=Path, metavar="FILE", required=True, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 5 if args.victim == "badnet" else 2
    if not 0 < args.poison_rate < 1:
        parser.error("--poison-rate must lie in (0, 1)")
    if args.diagnostics_only and args.victim != "badnet":
        parser.error("--diagnostics-only needs --victim badnet")
    return args


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
    train_set, poisons, queries, recipe, trigger = build_victim(train_full.subset(range(n)), test, args)

    model = to_functional(create_model("cnn", train_set.image_shape, train_set.num_classes, seed=args.seed),
                          train_set.mean, train_set.std)  # fmt: skip
    model = train(model, train_set, recipe, seed=args.seed, progress=False).model
    accuracy = evaluate(model, test).accuracy
    print(f"trained the CNN on {n} images ({args.victim} victim, {poisons.size} poisons) for {args.epochs} epochs: "
          f"test accuracy {accuracy:.4f}")  # fmt: skip

    twin = torch_twin(model)
    checked = np.concatenate([train_set.images[:16], train_set.images[poisons[:16]], queries.images[:16]])
    logit_diff = check_logits_agree(model, twin, checked, train_set)
    print(f"JAX and PyTorch logits agree (max |difference| {logit_diff:.2e})")
    diag = None
    if args.victim == "badnet":
        diag = victim_diagnostics(model, twin, train_set, poisons, test, trigger)
        print(f"attack success {diag['attack_success_rate']:.3f}; poison margins {diag['poison_margin']}; "
              f"PyTorch label gradient exactly 0 for {diag['torch_label_grad_zero_share_poisons']:.1%} of the "
              f"poisons, {diag['torch_label_grad_zero_share_clean']:.1%} of clean points")  # fmt: skip
        if args.diagnostics_only:
            print(json.dumps({k: v for k, v in diag.items() if not k.startswith("_")}, indent=2))
            return diag

    jp = run_jaxpoison(model, train_set, queries, args)
    print(f"jaxpoison: fit {jp['fit_s']:.1f} s, score {jp['score_s']:.1f} s")
    with tempfile.TemporaryDirectory(prefix="vs_kronfluence_") as workdir:
        kf = run_kronfluence(twin, train_set, queries, args, workdir)
        print(f"kronfluence: fit {kf['fit_s']:.1f} s, score {kf['score_s']:.1f} s")
        kf_softplus = None
        if args.kronfluence_softplus_ce:  # a fresh twin: prepare_model wraps the modules it is given
            kf_softplus = run_kronfluence(torch_twin(model), train_set, queries, args, workdir,
                                          task=SoftplusMarginTask(), one_at_a_time=False)  # fmt: skip
            print(f"kronfluence, softplus(-margin) loss: fit {kf_softplus['fit_s']:.1f} s, "
                  f"score {kf_softplus['score_s']:.1f} s")  # fmt: skip

    env = environment()
    jax_total = jp["fit_s"] + jp["score_s"]
    report = {
        "dataset": args.dataset,
        "victim": args.victim,
        "n_train": n,
        "queries": args.queries,
        "query_kind": "test images, true labels" if args.victim == "clean"
        else f"triggered test images of classes other than {TARGET}, measured against {TARGET}",
        "epochs": args.epochs,
        "recipe": {key: getattr(recipe, key) for key in ("optimizer", "learning_rate", "batch_size", "milestones")},
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
    if "fast_scores" in jp:  # the fast settings against jaxpoison's exact scores and kronfluence's time
        fast_total = jp["fast_fit_s"] + jp["fast_score_s"]
        report["fast"] = {
            "query_rank": args.fast_rank, "dtype": args.fast_dtype,
            "fit_s": jp["fast_fit_s"], "score_s": jp["fast_score_s"],
            "vs_jaxpoison_exact": agreement(jp["fast_scores"], jp["scores"]),
            "vs_kronfluence": agreement(jp["fast_scores"], kf["scores"]),
            "time_over_kronfluence_fit_plus_score": fast_total / (kf["fit_s"] + kf["score_s"]),
            "speedup_score": kf["score_s"] / jp["fast_score_s"],
            "speedup_fit_plus_score": (kf["fit_s"] + kf["score_s"]) / fast_total,
        }  # fmt: skip
        print(f"jaxpoison fast (rank {args.fast_rank}, {args.fast_dtype or 'model dtype'}): fit "
              f"{jp['fast_fit_s']:.1f} s, score {jp['fast_score_s']:.1f} s; {report['fast']}")  # fmt: skip
    if diag is not None:
        zero = diag.pop("_torch_zero_label_grad")
        report["victim_diagnostics"] = diag
        report.update(poison_report(jp["scores"], kf["scores"], poisons, zero))
        softplus = None
        if kf_softplus is not None:
            softplus = {**agreement(jp["scores"], kf_softplus["scores"]),
                        **poison_report(jp["scores"], kf_softplus["scores"], poisons, zero),
                        "fit_s": kf_softplus["fit_s"], "score_s": kf_softplus["score_s"]}  # fmt: skip
            report["kronfluence_softplus_ce"] = softplus
        report["disagreement_explanation"] = explain(diag, report, softplus)
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
    for key, label in (("agreement_poisons", "poisons"), ("agreement_poisons_torch_label_grad_zero",
                       "poisons, PyTorch label gradient 0"), ("agreement_poisons_torch_label_grad_nonzero",
                       "poisons, PyTorch label gradient ≠ 0")):  # fmt: skip
        if r.get(key):
            a = r[key]
            print(f"  {label} (n = {a['n']}): pearson {a['pearson']:.5f}, spearman {a['spearman']:.5f}, "
                  f"top-{a['top_k']} overlap {a['top_k_overlap_mean']:.3f}")  # fmt: skip
    if "kronfluence_softplus_ce" in r:
        a = r["kronfluence_softplus_ce"]
        print(f"  vs kronfluence with softplus(-margin): spearman {a['spearman']:.5f}, "
              f"on poisons {a['agreement_poisons']['spearman']:.5f}")  # fmt: skip
    if "disagreement_explanation" in r:
        print("  " + r["disagreement_explanation"])


if __name__ == "__main__":
    main()
