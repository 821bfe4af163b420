"""KD: focal Hinton knowledge distillation on a dense head's sigmoid logits (RetinaNet: one
sigmoid per anchor and class), normalised by the teacher's foreground mass.

The foreground mass alone (:mod:`~mgd_det.matching.foreground`: here the sum of
``sigmoid(t / tau)`` over every anchor x class element) still leaves the *sum* swamped: a fresh
student predicts its prior (p = 0.01) on every element, a trained teacher says ~1e-4 on
background, and each of the ~30,000 background elements of a 128x128 image then adds a KL of
~0.01-0.04, so the loss is ~60 against ~1 for the detection losses and under 0.1 % of its
gradient falls on the anchors the teacher calls objects. This is the imbalance the focal loss
answers for detection (a crowd of easy negatives, each small, outweighing the few positives),
and its answer carries over: each element's KL is weighted by ``|p_s - p_t|^gamma`` (student
and teacher probabilities at temperature T, the weight detached), the focal factor with the
teacher's soft target in place of the label. An element the student nearly matches (a
background anchor at 0.01 against 1e-4: weight 1e-4 at gamma 2) stops counting, a foreground
element it misses (0.01 against 0.9: weight 0.8) keeps its weight, and the gradient of an
element is ``w T (p_s - p_t)``: the sign of the mismatch, zero at a match. ``gamma = 0`` is the
plain KL.

Options: ``temperature`` (T), ``fg_temperature`` (tau), ``focal_gamma`` (gamma); on the
Detectron2 side their defaults are ``MGD.KD.TEMPERATURE``, ``FOREGROUND_TEMPERATURE`` and
``FOCAL_GAMMA``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..foreground import FOREGROUND_TEMPERATURE, foreground_weight, mean_over_processes
from ..held_factors import HeldFactors
from ..options import number
from ..outputs import DENSE, dense_outputs
from ..pathways import Pathway, PathwaySpec
from .registry import BuildContext, register_family

# gamma of the focal weight |p_s - p_t|^gamma of the dense KD: 2, the focal loss's own choice,
# cuts a background element the student nearly matches (0.01 vs 1e-4) to a weight of 1e-4
# while a missed foreground one (0.01 vs 0.9) keeps 0.8; 0 is the plain KL (see the module doc).
FOCAL_GAMMA = 2.0

OPTIONS = (
    number("temperature", 1.0, "KD temperature T", strict=True, hint=", e.g. 1.0"),
    number("fg_temperature", FOREGROUND_TEMPERATURE, "foreground temperature tau of the normaliser",
           strict=True, hint=" (the foreground sharpness), e.g. 0.1"),
    number("focal_gamma", FOCAL_GAMMA, "focal exponent gamma of each element's weight",
           hint=" (the dense KD's focal exponent; 0: the plain KL), e.g. 2.0"),
)


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Element-wise KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T))) x T^2.

    The binary cross-entropy minus the teacher's entropy: same gradient, but 0 when the
    student matches the teacher, so the loss trace shows progress instead of a floor.
    """
    student = student_logits.float() / temperature
    teacher = teacher_logits.detach().float() / temperature
    target = torch.sigmoid(teacher)
    cross = F.binary_cross_entropy_with_logits(student, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher, target, reduction="none")
    return (cross - entropy) * temperature**2


def focal_weight(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """``|sigmoid(s/T) - sigmoid(t/T)|^gamma``, element-wise, detached (float32)."""
    gap = torch.sigmoid(student_logits.detach().float() / temperature) - torch.sigmoid(
        teacher_logits.detach().float() / temperature)
    return gap.abs().pow(gamma)


def dense_kd_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    temperature: float,
    fg_temperature: float = FOREGROUND_TEMPERATURE,
    focal_gamma: float = FOCAL_GAMMA,
    held: Optional[HeldFactors] = None,
    held_key: str = "kd",
) -> torch.Tensor:
    """Focal sigmoid KD over dense logits (one (N, A*C, H, W) tensor per level), normalised by
    the teacher's foreground mass.

    Sum over every element of :func:`bernoulli_kl` times the detached :func:`focal_weight`
    ``|p_s - p_t|^focal_gamma`` (background anchors included: that the teacher calls them
    background is knowledge too, but one the student nearly holds weighs next to nothing),
    divided by the foreground mass ``sum sigmoid(t / fg_temperature)`` over every element,
    averaged over processes and at least the number of images (a batch where the teacher sees
    nothing counts as one object per image). ``focal_gamma`` 0 is the plain KL sum, computed
    without the weight. The temperatures and gamma are the family's checked options. ``held``
    (:mod:`~mgd_det.matching.held_factors`) supplies the focal weights, under ``(held_key,
    level)``, when DistPro's meta-step holds them at its base point.
    """
    if len(student_logits) != len(teacher_logits) or not student_logits:
        raise ValueError(f"expected one student and one teacher tensor per level, got "
                         f"{len(student_logits)} and {len(teacher_logits)}")
    total, mass = 0.0, 0.0
    for level, (s, t) in enumerate(zip(student_logits, teacher_logits)):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher logits differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        kl = bernoulli_kl(s, t, temperature)
        if focal_gamma:
            weight = (lambda s=s, t=t: focal_weight(s, t, temperature, focal_gamma))
            kl = kl * (held.factor((held_key, level), weight) if held is not None else weight())
        total = total + kl.sum()
        mass = mass + foreground_weight(t, fg_temperature).sum()
    return total / mean_over_processes(mass).clamp(min=float(student_logits[0].shape[0]))


class OutputKDPathway(Pathway):
    """:func:`dense_kd_loss` of the student's and the teacher's dense head logits: a
    foreground anchor's gradient is ~1/(foreground mass), not ~1/(anchors x classes), the
    background elements the student already matches barely count, and the loss is 0 when the
    student matches the teacher. ``head``: which dense head (``"dense"``: RetinaNet's;
    ``"rpn"``: an R-CNN's objectness, see :mod:`.rpn`)."""

    def __init__(self, spec: PathwaySpec, temperature: float = 1.0, fg_temperature: float = FOREGROUND_TEMPERATURE,
                 focal_gamma: float = FOCAL_GAMMA, held: Optional[HeldFactors] = None, head: str = DENSE):
        super().__init__(spec)
        self.temperature = float(temperature)
        self.fg_temperature = float(fg_temperature)
        self.focal_gamma = float(focal_gamma)
        self.held = held
        self.head = head

    def forward(self, student, teacher, teacher_features):
        student.require(self.head, "student", f"pathway {self.name!r}")
        teacher.require(self.head, "teacher", f"pathway {self.name!r}")
        return dense_kd_loss(dense_outputs(student, self.head)[0], dense_outputs(teacher, self.head)[0],
                             self.temperature, self.fg_temperature, self.focal_gamma, held=self.held, held_key=self.name)


@register_family("KD", options=OPTIONS, reads=DENSE)
def build_kd(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    return OutputKDPathway(spec, **options, held=ctx.held_factors)
