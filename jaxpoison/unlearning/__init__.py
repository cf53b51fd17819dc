"""Corrective unlearning: remove what flagged training points taught a model.

Each method is a function of (victim, poisoned training set, flagged indices, config):
:func:`exact_unlearning` (EU, retrain), :func:`continued_training` (CF, optionally with a
reset output layer), :func:`selective_synaptic_dampening` (SSD), :func:`scrub` (SCRUB) and
:func:`bad_teacher` (BadT). Methods with hyper-parameter grids or several candidate
checkpoints pick one with a :class:`Selector` on held-out validation data and the flagged
set, never the test set: :func:`clean_rule` needs no knowledge of the attack,
:func:`oracle_rule` scores triggered images and is labelled ``oracle`` wherever it is used.
"""

from jaxpoison.unlearning.badt import BadTeacherConfig, bad_teacher
from jaxpoison.unlearning.common import (
    Selector,
    UnlearningDiverged,
    UnlearnResult,
    clean_rule,
    oracle_rule,
    select,
    split_forget_retain,
)
from jaxpoison.unlearning.distill import DistillConfig
from jaxpoison.unlearning.retrain import continued_training, exact_unlearning
from jaxpoison.unlearning.scrub import ScrubConfig, scrub
from jaxpoison.unlearning.ssd import SSDConfig, dampen, importance, selective_synaptic_dampening

__all__ = [
    "BadTeacherConfig",
    "DistillConfig",
    "SSDConfig",
    "ScrubConfig",
    "Selector",
    "UnlearnResult",
    "UnlearningDiverged",
    "bad_teacher",
    "clean_rule",
    "continued_training",
    "dampen",
    "exact_unlearning",
    "importance",
    "oracle_rule",
    "scrub",
    "select",
    "selective_synaptic_dampening",
    "split_forget_retain",
]
