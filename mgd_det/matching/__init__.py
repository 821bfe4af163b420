"""Detectron2-free core of Matching Guided Distillation: pure torch + scipy.

Cost tracking, channel assignment, teacher channel reducers, BN margins, the partial L2
loss, Hinton KD, loss weighting and the ``MatchingDistiller`` module tying them together.
Usable for any pair of torch models.
"""

from .assignment import default_assignment, group_size, matched_cost, solve_assignment
from .cost import ChannelCostTracker
from .distiller import STUDENT_NORMS, MatchingDistiller, PositionSpec
from .kd import KD_KINDS, hinton_kd_loss
from .loss import partial_l2_loss
from .margins import gaussian_negative_mean, margin_from_norm
from .reducers import REDUCERS, reduce_teacher
from .weighting import ConstantWeighting, LossWeighting

__all__ = [
    "ChannelCostTracker",
    "ConstantWeighting",
    "KD_KINDS",
    "LossWeighting",
    "MatchingDistiller",
    "PositionSpec",
    "REDUCERS",
    "STUDENT_NORMS",
    "default_assignment",
    "gaussian_negative_mean",
    "group_size",
    "hinton_kd_loss",
    "margin_from_norm",
    "matched_cost",
    "partial_l2_loss",
    "reduce_teacher",
    "solve_assignment",
]
