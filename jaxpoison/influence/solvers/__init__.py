"""Inverse Hessian-vector product solvers: exact, conjugate gradient, LiSSA."""

from jaxpoison.influence.solvers.cg import CGInfo, conjugate_gradient
from jaxpoison.influence.solvers.exact import exact_ihvp, solve_dense
from jaxpoison.influence.solvers.lissa import LissaConfig, LissaInfo, lissa

__all__ = ["CGInfo", "LissaConfig", "LissaInfo", "conjugate_gradient", "exact_ihvp", "lissa", "solve_dense"]
