"""Detectron2-free core of Matching Guided Distillation: pure torch + scipy.

Distillation pathways (MGD's matched reducers, standardised feature L2, output KD and box
distillation), the channel matchers behind the MGD pathways (cost tracker, assignment,
margins), one loss weighting over all pathways, and the :class:`PathwayDistiller` tying them
together. Usable for any pair of torch models; importing it never imports Detectron2.
"""

from .assignment import default_assignment, group_size, matched_cost, solve_assignment
from .cost import ChannelCostTracker
from .distiller import PathwayDistiller, mgd_pathway_specs
from .loss import partial_l2_loss
from .margins import gaussian_negative_mean, margin_from_norm
from .matcher import ChannelMatcher, matcher_key
from .outputs import Canvas, NetOutputs, TeacherOutput, crop_to_student
from .families import BuildContext, family_names, parse_pathway, register_family
from .families.mgd import STUDENT_NORMS
from .options import Option, OptionError
from .pathways import Pathway, PathwaySpec
from .reducers import REDUCERS, reduce_teacher
from .weighting import ConstantWeighting, LossWeighting

__all__ = [
    "BuildContext",
    "Canvas",
    "ChannelCostTracker",
    "ChannelMatcher",
    "ConstantWeighting",
    "LossWeighting",
    "NetOutputs",
    "Option",
    "OptionError",
    "Pathway",
    "PathwayDistiller",
    "PathwaySpec",
    "REDUCERS",
    "STUDENT_NORMS",
    "TeacherOutput",
    "crop_to_student",
    "default_assignment",
    "family_names",
    "gaussian_negative_mean",
    "group_size",
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
