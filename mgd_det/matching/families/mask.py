"""MASK_KD: a Mask R-CNN's mask head distilled per pixel on the regions the teacher calls
foreground.

Of the distillation ROIs (:mod:`.roi`), the mask ROIs are those whose largest teacher class is
not background; both mask heads run on those boxes (each from its own features), and each
pixel's mask logit of the teacher's class (the one channel of a class-agnostic head) is
distilled with the binary KL of :func:`~.kd.bernoulli_kl` (``x T^2``, 0 when the student
matches). The loss is the mean over pixels, summed over mask ROIs and divided by their count
averaged over processes (at least 1): a batch where the teacher sees nothing gives 0, with the
student's mask head still in the graph.

Option: ``temperature`` (T; default ``MGD.KD.TEMPERATURE``).
"""
from __future__ import annotations

import torch

from ..foreground import mean_over_processes
from ..outputs import MASKS
from ..pathways import HeadOutputPathway, Pathway, PathwaySpec
from .kd import bernoulli_kl
from .registry import BuildContext, register_family
from .roi import KD_OPTIONS, teacher_foreground


def class_masks(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(M, S, S) logits of each ROI's class from (M, K, S, S) or class-agnostic (M, 1, S, S)."""
    if mask_logits.shape[1] == 1:
        return mask_logits[:, 0]
    return mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), classes]


def mask_kd_loss(student_masks: torch.Tensor, teacher_masks: torch.Tensor, classes: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """Per-pixel binary KL of the masks of ``classes`` (one per mask ROI), mean over pixels,
    summed over ROIs / their count averaged over processes."""
    if student_masks.shape[0] != teacher_masks.shape[0] or student_masks.shape[2:] != teacher_masks.shape[2:]:
        raise ValueError(f"student and teacher mask logits differ in shape: {tuple(student_masks.shape)} "
                         f"vs {tuple(teacher_masks.shape)}")
    kl = bernoulli_kl(class_masks(student_masks, classes), class_masks(teacher_masks, classes), temperature)
    count = kl.new_tensor(float(kl.shape[0]))
    return kl.flatten(1).mean(dim=1).sum() / mean_over_processes(count).clamp(min=1.0)


class MaskKDPathway(HeadOutputPathway):
    reads = MASKS

    def loss(self, student, teacher, temperature: float = 1.0):
        regions = teacher.regions
        _, classes = teacher_foreground(regions.class_logits[regions.mask_rois])
        return mask_kd_loss(student.regions.mask_logits, regions.mask_logits, classes, temperature)


@register_family("MASK_KD", options=KD_OPTIONS, reads=MASKS)
def build_mask_kd(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return MaskKDPathway(spec, **options)
