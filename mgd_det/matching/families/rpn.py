"""RPN_KD and RPN_BOX: the dense KD and BOX ideas on a two-stage detector's region proposal
network.

An RPN is a dense head with one sigmoid per anchor (objectness) and four box deltas. RPN_KD is
:func:`~.kd.dense_kd_loss` of the objectness logits: focal (each anchor's KL weighted by
``|p_s - p_t|^gamma``, detached), normalised by the teacher's objectness mass averaged over
processes. RPN_BOX is :func:`~.box.dense_box_loss` of the anchor deltas with one "class": each
anchor weighted by the teacher's sharpened objectness, so the anchors the teacher is confident
about carry the loss and the rest barely count. Both read the RPN outputs of every image of
the batch, labeled or not. Options: KD's (``temperature``, ``fg_temperature``,
``focal_gamma``) and BOX's (``fg_temperature``, ``beta``), with the same global defaults.
"""
from __future__ import annotations

from ..outputs import RPN
from ..pathways import Pathway, PathwaySpec
from . import box, kd
from .registry import BuildContext, register_family


@register_family("RPN_KD", options=kd.OPTIONS, reads=RPN)
def build_rpn_kd(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return kd.OutputKDPathway(spec, **options, held=ctx.held_factors, head=RPN)


@register_family("RPN_BOX", options=box.OPTIONS, reads=RPN)
def build_rpn_box(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return box.OutputBoxPathway(spec, 1, **options, head=RPN)
