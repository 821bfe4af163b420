"""PKD: per-channel standardised feature L2 (Pearson-correlation distillation).

Each channel map is standardised per image on both sides and compared by mean squared error
(= 2·(1 − Pearson correlation)). Needs no matching; a 1×1 connector maps the student to the
teacher's width only where the widths differ. Suits FPN outputs, whose scale is arbitrary.
Across positions (student ``p3`` from teacher ``p4``) the teacher's map is first resized to the
student's (:func:`~mgd_det.matching.pathways.align_to_student`).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_feature_pair
from ..pathways import Pathway, PathwaySpec, align_to_student
from .registry import BuildContext, register_family


def standardise(feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel map of each image to zero mean and unit variance (float32)."""
    flat = feat.float().flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    var = flat.var(dim=2, unbiased=False, keepdim=True)
    return ((flat - mean) * torch.rsqrt(var + eps)).view_as(feat)


class StandardizedFeaturePathway(Pathway):
    """PKD-style: mean squared error of per-channel standardised maps (2·(1 − Pearson r))."""

    def __init__(self, spec: PathwaySpec, student_channels: int, teacher_channels: int):
        super().__init__(spec)
        self.teacher_channels = int(teacher_channels)
        self.student_channels = int(student_channels)
        self.connector = (
            nn.Identity() if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        )

    def forward(self, student, teacher, teacher_features):
        s, t = student.features[self.spec.position], teacher_features[self.spec.source]
        if self.spec.crosses:
            t = align_to_student(t, s.shape[-2:])
        check_feature_pair(s, t, self.student_channels, self.teacher_channels, f"pathway {self.name!r}")
        diff = standardise(self.connector(s)) - standardise(t.detach())
        return diff.pow(2).mean(dim=(1, 2, 3)).sum() / s.shape[0]


@register_family("PKD", cross_position=True)
def build_pkd(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return StandardizedFeaturePathway(spec, *ctx.feature_channels(spec))
