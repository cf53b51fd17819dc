"""The influence engine: gradients, curvature products, inverse-HVP solvers, K-FAC/EK-FAC, scores.

Sign convention: a positive score means the training point supports the query's
prediction (see :mod:`jaxpoison.influence.scores`).
"""

from jaxpoison.influence.capture import (
    Layer,
    UntrackedParametersError,
    capture,
    conv_patches,
    find_layers,
    layer_gradient,
    per_example_layer_gradients,
    tapped_apply,
)
from jaxpoison.influence.grads import example_loss, flatten, flatten_batch, per_example_grads, tree_dot
from jaxpoison.influence.hvp import dense_gauss_newton, dense_hessian, gnvp, hvp
from jaxpoison.influence.kfac import (
    FactorConfig,
    FactorError,
    Factors,
    dense_block,
    fit_factors,
    load_factors,
    params_hash,
    precondition,
    save_factors,
)
from jaxpoison.influence.losses import (
    MEASUREMENTS,
    NUMERICS_VERSION,
    batch_loss,
    cross_entropy,
    get_measurement,
    margin_measurement,
)
from jaxpoison.influence.scores import (
    DEFAULT_DAMPING,
    SIGN_CONVENTION,
    ScoreConfig,
    Scores,
    gradients_from_pytree,
    load_scores,
    pairwise_scores,
    query_gradients,
    save_scores,
    self_scores,
)
from jaxpoison.influence.solvers import (
    CGInfo,
    LissaConfig,
    LissaInfo,
    conjugate_gradient,
    exact_ihvp,
    lissa,
    solve_dense,
)
from jaxpoison.influence.trak import TrakConfig, trak_features, trak_scores

__all__ = [
    "DEFAULT_DAMPING",
    "MEASUREMENTS",
    "NUMERICS_VERSION",
    "SIGN_CONVENTION",
    "CGInfo",
    "FactorConfig",
    "FactorError",
    "Factors",
    "Layer",
    "LissaConfig",
    "LissaInfo",
    "ScoreConfig",
    "Scores",
    "TrakConfig",
    "UntrackedParametersError",
    "batch_loss",
    "capture",
    "conjugate_gradient",
    "conv_patches",
    "cross_entropy",
    "dense_block",
    "dense_gauss_newton",
    "dense_hessian",
    "exact_ihvp",
    "example_loss",
    "find_layers",
    "fit_factors",
    "flatten",
    "flatten_batch",
    "get_measurement",
    "gnvp",
    "gradients_from_pytree",
    "hvp",
    "layer_gradient",
    "lissa",
    "load_factors",
    "load_scores",
    "margin_measurement",
    "pairwise_scores",
    "params_hash",
    "per_example_grads",
    "per_example_layer_gradients",
    "precondition",
    "query_gradients",
    "save_factors",
    "save_scores",
    "self_scores",
    "solve_dense",
    "tapped_apply",
    "trak_features",
    "trak_scores",
    "tree_dot",
]
