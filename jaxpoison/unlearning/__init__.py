"""Corrective unlearning: remove what flagged training points taught a model.

Each method is a function of (victim, poisoned training set, flagged indices, config):
:func:`exact_unlearning` (EU, retrain), :func:`continued_training` (CF),
:func:`selective_synaptic_dampening` (SSD), :func:`scrub` (SCRUB) and
:func:`bad_teacher` (BadT). Methods with hyper-parameter grids or several candidate
checkpoints pick one with a ``selector`` on held-out validation data, never the test set.
"""

from jaxpoison.unlearning.badt import BadTeacherConfig, bad_teacher
from jaxpoison.unlearning.common import Selector, UnlearnResult, select, split_forget_retain
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
    "bad_teacher",
    "continued_training",
    "dampen",
    "exact_unlearning",
    "importance",
    "scrub",
    "select",
    "selective_synaptic_dampening",
    "split_forget_retain",
]
