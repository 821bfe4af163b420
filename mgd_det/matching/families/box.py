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
from ..outputs import DENSE, dense_outputs
from ..pathways import Pathway, PathwaySpec
from .registry import BuildContext, register_family

OPTIONS = (
    number("fg_temperature", FOREGROUND_TEMPERATURE, "foreground temperature tau of the anchor weight",
           strict=True, hint=" (the foreground sharpness), e.g. 0.1"),
    number("beta", 0.1, "smooth-L1 transition point", strict=True, hint=", e.g. 0.1"),
)


def dense_box_loss(student_deltas, teacher_logits, teacher_deltas, num_classes: int, beta: float = 0.1,
                   fg_temperature: float = FOREGROUND_TEMPERATURE) -> torch.Tensor:
    """Smooth-L1 of the student's box deltas to the teacher's over dense levels ((N, A*4, H, W)
    each), weighted per anchor by the teacher's foreground weight.

    Per anchor the weight is :func:`~mgd_det.matching.foreground.foreground_weight` of the
    teacher's largest class logit of its ``num_classes`` ((N, A*num_classes, H, W) logits per
    level; sharpened by ``fg_temperature``; at 1 it is the largest class probability, which left
    most of the weight on the many anchors below 0.5), so background anchors, where the
    teacher's box output means nothing, barely count; the loss is the weighted sum over anchors
    divided by the teacher's foreground mass averaged over processes (a weighted mean; at
    least 1). An RPN is the case ``num_classes = 1`` (its objectness logit).
    """
    total, weight_sum = 0.0, 0.0
    for s_deltas, t_logits, t_deltas in zip(student_deltas, teacher_logits, teacher_deltas):
        n, _, h, w = t_logits.shape
        top = t_logits.detach().float().view(n, -1, num_classes, h, w).amax(dim=2)
        weight = foreground_weight(top, fg_temperature)
        t_boxes = t_deltas.detach().view(n, -1, 4, h, w)
        s_boxes = s_deltas.view_as(t_boxes)
        err = F.smooth_l1_loss(s_boxes.float(), t_boxes.float(), beta=beta, reduction="none").sum(dim=2)
        total = total + (err * weight).sum()
        weight_sum = weight_sum + weight.sum()
    return total / mean_over_processes(weight_sum).clamp(min=1.0)


class OutputBoxPathway(Pathway):
    """:func:`dense_box_loss` of the dense heads' box deltas, weighted by the teacher's
    foreground. ``head``: which dense head (``"dense"``: RetinaNet's, ``num_classes`` logits per
    anchor; ``"rpn"``: an R-CNN's proposal network, one, see :mod:`.rpn`)."""

    def __init__(self, spec: PathwaySpec, num_classes: int, beta: float = 0.1,
                 fg_temperature: float = FOREGROUND_TEMPERATURE, head: str = DENSE):
        super().__init__(spec)
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.fg_temperature = float(fg_temperature)
        self.head = head

    def forward(self, student, teacher, teacher_features):
        student.require(self.head, "student", f"pathway {self.name!r}")
        teacher.require(self.head, "teacher", f"pathway {self.name!r}")
        teacher_logits, teacher_deltas = dense_outputs(teacher, self.head)
        return dense_box_loss(dense_outputs(student, self.head)[1], teacher_logits, teacher_deltas, self.num_classes,
                              self.beta, self.fg_temperature)


@register_family("BOX", options=OPTIONS, reads=DENSE)
def build_box(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    if ctx.num_classes <= 0:
        raise ConfigError(f"pathway {spec.name!r}: the BOX family needs the head's number of classes")
    return OutputBoxPathway(spec, ctx.num_classes, **options)
