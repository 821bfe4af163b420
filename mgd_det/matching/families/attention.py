"""AT: attention transfer -- the student's spatial attention map learns the teacher's.

An attention map is the mean over channels of ``|x|^power`` (Zagoruyko and Komodakis, 2017),
one (H, W) map per image, L2-normalised over its pixels; the loss is the squared L2 distance
between the student's and the teacher's normalised maps, summed per image and divided by the
number of images. It has no channel dimension, so any two positions can be connected, whatever
their widths; across strides the teacher's map is resized to the student's
(:func:`~mgd_det.matching.pathways.align_to_student`) before normalising. No parameters.
"""
from __future__ import annotations

import torch

from ..options import number
from ..pathways import Pathway, PathwaySpec, align_to_student
from .registry import BuildContext, register_family

OPTIONS = (
    number("power", 2.0, "exponent p of the attention map mean_c |x|^p", strict=True, hint=", e.g. 2"),
)


def attention_map(feat: torch.Tensor, power: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): the mean over channels of |x|^power (float32)."""
    return feat.float().abs().pow(power).mean(dim=1, keepdim=True)


def normalised(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each image's map divided by its L2 norm over the pixels, flattened to (N, H*W)."""
    flat = maps.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp(min=eps)


class AttentionPathway(Pathway):
    def __init__(self, spec: PathwaySpec, power: float = 2.0):
        super().__init__(spec)
        self.power = float(power)

    def forward(self, student, teacher, teacher_features):
        s, t = student.features[self.spec.position], teacher_features[self.spec.source]
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
            raise ValueError(f"pathway {self.name!r}: expected (N, C, H, W) maps of equal N; got student "
                             f"{tuple(s.shape)}, teacher {tuple(t.shape)}")
        target = align_to_student(attention_map(t.detach(), self.power), s.shape[-2:])
        gap = normalised(attention_map(s, self.power)) - normalised(target)
        return gap.pow(2).sum() / s.shape[0]


@register_family("AT", options=OPTIONS, cross_position=True)
def build_attention(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return AttentionPathway(spec, **options)
