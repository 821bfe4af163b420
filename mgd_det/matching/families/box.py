"""BOX: dense distillation of the head's box regression -- smooth-L1 between student and
teacher box deltas, weighted per anchor by the teacher's foreground weight. With ``KD`` it lets
a student learn the teacher's outputs without any annotation.

Options: ``fg_temperature`` (the foreground weight's tau; on the Detectron2 side its default is
``MGD.KD.FOREGROUND_TEMPERATURE``) and ``beta`` (the smooth-L1 transition).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..foreground import FOREGROUND_TEMPERATURE, foreground_weight, mean_over_processes
from ..options import number
from ..pathways import Pathway, PathwaySpec
from .registry import BuildContext, register_family

OPTIONS = (
    number("fg_temperature", FOREGROUND_TEMPERATURE, "foreground temperature tau of the anchor weight",
           strict=True, hint=" (the foreground sharpness), e.g. 0.1"),
    number("beta", 0.1, "smooth-L1 transition point", strict=True, hint=", e.g. 0.1"),
)


class OutputBoxPathway(Pathway):
    """Dense box distillation: smooth-L1 of box deltas, weighted by the teacher's foreground.

    Per anchor the weight is :func:`~mgd_det.matching.foreground.foreground_weight` of the
    teacher's largest class logit (sharpened by ``fg_temperature``; at 1 it is the largest
    class probability, which left most of the weight on the many anchors below 0.5), so
    background anchors, where the teacher's box output means nothing, barely count; the loss
    is the weighted sum over anchors divided by the teacher's foreground mass averaged over
    processes (a weighted mean; at least 1).
    """

    def __init__(self, spec: PathwaySpec, num_classes: int, beta: float = 0.1,
                 fg_temperature: float = FOREGROUND_TEMPERATURE):
        super().__init__(spec)
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.fg_temperature = float(fg_temperature)

    def _per_anchor(self, logits: torch.Tensor, deltas: torch.Tensor):
        n, _, h, w = logits.shape
        top = logits.detach().float().view(n, -1, self.num_classes, h, w).amax(dim=2)
        return foreground_weight(top, self.fg_temperature), deltas.view(n, -1, 4, h, w)

    def forward(self, student, teacher, teacher_features):
        student.require_head("student", f"pathway {self.name!r}")
        teacher.require_head("teacher", f"pathway {self.name!r}")
        total, weight_sum = 0.0, 0.0
        for s_deltas, t_logits, t_deltas in zip(student.box_deltas, teacher.logits, teacher.box_deltas):
            weight, t_boxes = self._per_anchor(t_logits, t_deltas.detach())
            s_boxes = s_deltas.view_as(t_boxes)
            err = F.smooth_l1_loss(s_boxes.float(), t_boxes.float(), beta=self.beta, reduction="none").sum(dim=2)
            total = total + (err * weight).sum()
            weight_sum = weight_sum + weight.sum()
        return total / mean_over_processes(weight_sum).clamp(min=1.0)


@register_family("BOX", options=OPTIONS, reads_head=True)
def build_box(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    if ctx.num_classes <= 0:
        raise ConfigError(f"pathway {spec.name!r}: the BOX family needs the head's number of classes")
    return OutputBoxPathway(spec, ctx.num_classes, **options)
