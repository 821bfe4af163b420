"""The two-stage heads on the distillation ROIs: what the ROI_KD, ROI_BOX and MASK_KD
pathways compare (:class:`~mgd_det.matching.outputs.RegionOutputs`).

The teacher's ROI outputs depend on the student: they are taken on the student's proposals, so
they run after the student's pass. Per image the distillation ROIs are the student's first
``MGD.RCNN.ROIS_PER_IMAGE`` proposals (the RPN's most confident after NMS, detached): the same
boxes for labeled and unlabeled images, without reading an annotation. The frozen teacher pools
them from its own features and runs its box head; the ROIs whose largest teacher class is not
background are the mask ROIs, where both mask heads run. The student runs its heads on the
same boxes from its own features, with gradients.

Under DistPro's finite-difference probes the student's parameters move slightly and its
proposals with them; the ROIs (and with them the teacher's outputs) are a detached,
student-dependent choice, held at the base point like KD's focal weight
(:mod:`mgd_det.matching.held_factors`), so the difference quotient sees only the losses'
smooth dependence on the student.
"""
from typing import List, Sequence

import torch
from detectron2.structures import Boxes

from mgd_det.matching.held_factors import HeldFactors
from mgd_det.matching.outputs import MASKS, REGIONS, NetOutputs, RegionOutputs, TeacherOutput

HELD_KEY = ("regions",)


def distillation_rois(proposals: Sequence[torch.Tensor], per_image: int) -> List[torch.Tensor]:
    """Per image the first ``per_image`` proposal boxes (the RPN's order: most confident
    first), detached."""
    return [boxes[:per_image].detach() for boxes in proposals]


def box_head_outputs(roi_heads, features, rois: Sequence[torch.Tensor]):
    """(class logits (R, K+1), box deltas) of ``roi_heads``' box head on ``rois`` (per image,
    (R_i, 4) in image coordinates), pooled from ``features`` (by name)."""
    pooled = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], [Boxes(r) for r in rois])
    logits, deltas = roi_heads.box_predictor(roi_heads.box_head(pooled))
    return logits, deltas


def mask_head_outputs(roi_heads, features, rois: Sequence[torch.Tensor], select: torch.Tensor) -> torch.Tensor:
    """(M, K or 1, S, S) mask logits of ``roi_heads``' mask head on the ROIs ``select`` keeps
    ((R,) bool over the concatenated ``rois``)."""
    per_image = select.split([len(r) for r in rois])
    boxes = [Boxes(r[keep]) for r, keep in zip(rois, per_image)]
    pooled = roi_heads.mask_pooler([features[f] for f in roi_heads.mask_in_features], boxes)
    return roi_heads.mask_head.layers(pooled)


def mask_rois(class_logits: torch.Tensor, rois_per_image: Sequence[int], per_image: int) -> torch.Tensor:
    """(R,) bool: per image, of the ROIs whose largest class is not background (the last
    column), the ``per_image`` the teacher is surest are foreground (lowest background
    probability). The cap bounds the mask heads' cost, which dominates a step otherwise (a mask
    head is ~4x a box head per ROI)."""
    background = torch.softmax(class_logits.float(), dim=1)[:, -1]
    foreground = class_logits.argmax(dim=1) != class_logits.shape[1] - 1
    keep = torch.zeros_like(foreground)
    start = 0
    for count in rois_per_image:
        candidates = torch.where(foreground[start:start + count], background[start:start + count], 2.0)
        order = candidates.argsort()[:per_image]
        keep[start + order] = candidates[order] <= 1.0
        start += count
    return keep


@torch.no_grad()
def teacher_regions(teacher, teacher_out: TeacherOutput, rois: Sequence[torch.Tensor], masks_per_image: int = 0
                    ) -> RegionOutputs:
    """The frozen teacher's box head outputs on ``rois``; with ``masks_per_image`` > 0 also its
    mask head's on the mask ROIs (:func:`mask_rois`)."""
    logits, deltas = box_head_outputs(teacher.roi_heads, teacher_out.head_inputs, rois)
    regions = RegionOutputs(logits, deltas)
    if masks_per_image:
        regions.mask_rois = mask_rois(logits, [len(r) for r in rois], masks_per_image)
        regions.mask_logits = mask_head_outputs(teacher.roi_heads, teacher_out.head_inputs, rois, regions.mask_rois)
    return regions


def attach_regions(student, teacher, student_out: NetOutputs, teacher_out: TeacherOutput, reads,
                   per_image: int, masks_per_image: int, held: HeldFactors) -> None:
    """Fill ``regions`` of both outputs for the kinds in ``reads`` (REGIONS, MASKS):
    ``per_image`` distillation ROIs, at most ``masks_per_image`` of them mask ROIs."""
    masks = MASKS in reads

    def teacher_side():
        rois = distillation_rois(student_out.proposals, per_image)
        return rois, teacher_regions(teacher, teacher_out, rois, masks_per_image if masks else 0)

    rois, teacher_out.regions = held.factor(HELD_KEY, teacher_side)
    regions = RegionOutputs(None, None, mask_rois=teacher_out.regions.mask_rois)
    if REGIONS in reads:
        regions.class_logits, regions.box_deltas = box_head_outputs(student.roi_heads, student_out.head_inputs, rois)
    if masks:
        regions.mask_logits = mask_head_outputs(student.roi_heads, student_out.head_inputs, rois, regions.mask_rois)
    student_out.regions = regions
