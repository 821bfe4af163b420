"""Detectron2-free core of Matching Guided Distillation: pure torch + scipy.

Distillation pathways (MGD's matched reducers, standardised feature L2, output KD and box
distillation), the channel matchers behind the MGD pathways (cost tracker, assignment,
margins), one loss weighting over all pathways, and the :class:`PathwayDistiller` tying them
together. Usable for any pair of torch models; importing it never imports Detectron2.
"""

from .assignment import default_assignment, group_size, matched_cost, solve_assignment
from .cost import ChannelCostTracker
from .distiller import MatchingDistiller, PathwayDistiller, PositionSpec, mgd_pathway_specs
from .kd import KD_KINDS, hinton_kd_loss
from .loss import partial_l2_loss
from .margins import gaussian_negative_mean, margin_from_norm
from .matcher import ChannelMatcher, matcher_key
from .outputs import Canvas, NetOutputs, TeacherOutput, crop_to_student
from .families import BuildContext, family_names, register_family
from .pathways import (
    STUDENT_NORMS,
    Pathway,
    PathwaySpec,
    parse_pathway,
)
from .reducers import REDUCERS, reduce_teacher
from .weighting import ConstantWeighting, LossWeighting

__all__ = [
    "BuildContext",
    "Canvas",
    "ChannelCostTracker",
    "ChannelMatcher",
    "ConstantWeighting",
    "KD_KINDS",
    "LossWeighting",
    "MatchingDistiller",
    "NetOutputs",
    "Pathway",
    "PathwayDistiller",
    "PathwaySpec",
    "PositionSpec",
    "REDUCERS",
    "STUDENT_NORMS",
    "TeacherOutput",
    "crop_to_student",
    "default_assignment",
    "family_names",
    "gaussian_negative_mean",
    "group_size",
    "hinton_kd_loss",
    "margin_from_norm",
    "matched_cost",
    "matcher_key",
    "mgd_pathway_specs",
    "parse_pathway",
    "partial_l2_loss",
    "reduce_teacher",
    "register_family",
    "solve_assignment",
]
