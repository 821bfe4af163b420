"""ROI_KD and ROI_BOX: a two-stage detector's box head distilled on the same regions.

Both networks run their box head on the *same* boxes -- the student's most confident proposals
of each image, each network pooling them from its own features (the distillation ROIs,
:mod:`mgd_det.modeling.region_pass`) -- so the teacher's outputs are a target for exactly the
regions the student classifies.

- ROI_KD: Hinton's KD on the box head's softmax over K classes + background, at temperature T:
  ``KL(softmax(t/T) || softmax(s/T)) * T^2`` per ROI, averaged over the ROIs of all processes
  (their count averaged over processes, so data-parallel gradients are the union batch's).
- ROI_BOX: smooth-L1 between the student's and the teacher's box deltas of the class the
  teacher finds (its largest non-background logit; the one set of deltas of a class-agnostic
  head), each ROI weighted by the teacher's foreground probability ``1 - p_background``: where
  the teacher finds no object its box output means nothing. Divided by the weight summed over
  the ROIs, averaged over processes (at least 1).

Options: ``temperature`` (ROI_KD; default ``MGD.KD.TEMPERATURE``), ``beta`` (ROI_BOX's smooth-L1
transition). Deltas are compared in the box transform's units, which must agree between the
two heads (checked when the model is built).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..foreground import mean_over_processes
from ..options import number
from ..outputs import REGIONS
from ..pathways import HeadOutputPathway, Pathway, PathwaySpec
from .registry import BuildContext, register_family

KD_OPTIONS = (number("temperature", 1.0, "KD temperature T", strict=True, hint=", e.g. 1.0"),)
BOX_OPTIONS = (number("beta", 0.1, "smooth-L1 transition point", strict=True, hint=", e.g. 0.1"),)


def roi_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2`` summed over (R, K+1) ROIs, divided by R
    averaged over processes (at least 1)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher ROI class logits differ in shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(teacher_logits.shape)}")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum()
    count = student_logits.new_tensor(float(student_logits.shape[0]), dtype=torch.float32)
    return kl * temperature**2 / mean_over_processes(count).clamp(min=1.0)


def teacher_foreground(teacher_logits: torch.Tensor):
    """(per ROI the teacher's foreground probability 1 - p_background, its largest
    non-background class), both detached; background is the last column (Detectron2's)."""
    logits = teacher_logits.detach().float()
    return 1.0 - F.softmax(logits, dim=1)[:, -1], logits[:, :-1].argmax(dim=1)


def class_deltas(deltas: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, 4) deltas of each ROI's class from (R, 4K) class-specific or (R, 4) agnostic ones."""
    if deltas.shape[1] == 4:
        return deltas
    index = (classes[:, None] * 4 + torch.arange(4, device=deltas.device)).long()
    return deltas.gather(1, index)


def roi_box_loss(student_deltas: torch.Tensor, teacher_logits: torch.Tensor, teacher_deltas: torch.Tensor,
                 beta: float = 0.1) -> torch.Tensor:
    """Smooth-L1 of the deltas of the teacher's class, weighted by its foreground probability
    (see the module doc)."""
    if student_deltas.shape != teacher_deltas.shape:
        raise ValueError(f"student and teacher ROI box deltas differ in shape: {tuple(student_deltas.shape)} "
                         f"vs {tuple(teacher_deltas.shape)}")
    weight, classes = teacher_foreground(teacher_logits)
    s = class_deltas(student_deltas, classes).float()
    t = class_deltas(teacher_deltas.detach(), classes).float()
    err = F.smooth_l1_loss(s, t, beta=beta, reduction="none").sum(dim=1)
    return (err * weight).sum() / mean_over_processes(weight.sum()).clamp(min=1.0)


class RoiKDPathway(HeadOutputPathway):
    reads = REGIONS

    def loss(self, student, teacher, temperature: float = 1.0):
        return roi_kd_loss(student.regions.class_logits, teacher.regions.class_logits, temperature)


class RoiBoxPathway(HeadOutputPathway):
    reads = REGIONS

    def loss(self, student, teacher, beta: float = 0.1):
        return roi_box_loss(student.regions.box_deltas, teacher.regions.class_logits, teacher.regions.box_deltas, beta)


@register_family("ROI_KD", options=KD_OPTIONS, reads=REGIONS)
def build_roi_kd(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return RoiKDPathway(spec, **options)


@register_family("ROI_BOX", options=BOX_OPTIONS, reads=REGIONS)
def build_roi_box(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return RoiBoxPathway(spec, **options)
