"""Inverse Hessian-vector product solvers: exact, conjugate gradient, LiSSA."""

from jaxpoison.influence.solvers.cg import CGInfo, conjugate_gradient
from jaxpoison.influence.solvers.exact import exact_ihvp, solve_dense
from jaxpoison.influence.solvers.lissa import DAMPING_FORMS, LissaConfig, LissaInfo, lissa, relative_residual

__all__ = [
    "DAMPING_FORMS",
    "CGInfo",
    "LissaConfig",
    "LissaInfo",
    "conjugate_gradient",
    "exact_ihvp",
    "lissa",
    "relative_residual",
    "solve_dense",
]
