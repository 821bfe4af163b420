"""Hinton knowledge distillation on logits, to combine with MGD's feature loss.

Dense heads (RetinaNet: a sigmoid per anchor and class) need more than an average over
elements: on a 128x128 image about 3,000 anchors x 10 classes compete with the ~20 anchors
that see an object, so a mean gives a foreground anchor a gradient of ~1/30,000, and a
teacher-weighted mean is still dominated by the crowd of anchors at probability 0.05-0.3.
:func:`dense_kd_loss` and :func:`foreground_weight` normalise by the teacher's *foreground
mass* instead (as RetinaNet normalises its focal loss by the number of foreground anchors):
the sum over anchors of ``sigmoid(max logit / tau)``, where the foreground temperature
``tau`` < 1 sharpens the teacher's probability towards the indicator of p >= 0.5.

That normaliser alone still leaves the *sum* swamped: a fresh student predicts its prior
(p = 0.01) on every element, a trained teacher says ~1e-4 on background, and each of the
~30,000 background elements of a 128x128 image then adds a KL of ~0.01-0.04, so the loss is
~60 against ~1 for the detection losses and under 0.1 % of its gradient falls on the anchors
the teacher calls objects. This is the imbalance the focal loss answers for detection (a
crowd of easy negatives, each small, outweighing the few positives), and its answer carries
over: :func:`dense_kd_loss` weights each element's KL by ``|p_s - p_t|^gamma`` (student and
teacher probabilities at temperature T, the weight detached), the focal factor with the
teacher's soft target in place of the label. An element the student nearly matches (a
background anchor at 0.01 against 1e-4: weight 1e-4 at gamma 2) stops counting, a foreground
element it misses (0.01 against 0.9: weight 0.8) keeps its weight, and the gradient of an
element is ``w T (p_s - p_t)``: the sign of the mismatch, zero at a match. ``gamma = 0`` is the
plain KL.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

KD_KINDS = ("softmax", "sigmoid")
# tau of the foreground weight sigmoid(logit / tau): 1 is the teacher's probability itself,
# 0.1 maps p = 0.3 to 2e-4, p = 0.45 to 0.12, p = 0.55 to 0.88 and p = 0.7 to 1: close to the
# indicator of p >= 0.5 (the anchors the teacher calls objects), yet smooth.
FOREGROUND_TEMPERATURE = 0.1
# gamma of the focal weight |p_s - p_t|^gamma of the dense KD: 2, the focal loss's own choice,
# cuts a background element the student nearly matches (0.01 vs 1e-4) to a weight of 1e-4
# while a missed foreground one (0.01 vs 0.9) keeps 0.8; 0 is the plain KL (see the module doc).
FOCAL_GAMMA = 2.0


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    kind: str = "softmax",
) -> torch.Tensor:
    """Soft-target loss scaled by T^2 (so gradients keep their size across temperatures).

    - ``softmax``: KL(softmax(t/T) || softmax(s/T)) over the last axis, averaged over rows
      (all leading axes), for single-label heads.
    - ``sigmoid``: binary cross-entropy of sigmoid(s/T) against sigmoid(t/T), averaged over
      elements, for per-class sigmoid heads (e.g. RetinaNet). Its minimum over the student is
      the entropy of the teacher's probabilities, not zero.

    The teacher logits are detached.
    """
    if kind not in KD_KINDS:
        raise ValueError(f"unknown KD kind {kind!r}; valid kinds are {', '.join(KD_KINDS)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    student = student_logits.float() / temperature
    teacher = teacher_logits.detach().float() / temperature
    if kind == "softmax":
        num_classes = student.shape[-1]
        loss = F.kl_div(
            F.log_softmax(student.reshape(-1, num_classes), dim=1),
            F.log_softmax(teacher.reshape(-1, num_classes), dim=1),
            reduction="batchmean",
            log_target=True,
        )
    else:
        loss = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    return loss * temperature**2


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive; got {value}")


def foreground_weight(teacher_logits: torch.Tensor, temperature: float = FOREGROUND_TEMPERATURE) -> torch.Tensor:
    """sigmoid(logit / temperature) of detached teacher logits (float32), element-wise.

    Applied to the per-anchor maximum over classes it is the anchor's foreground weight;
    summed over anchors, the teacher's foreground mass (see the module doc).
    """
    _check_temperature("foreground temperature", temperature)
    return torch.sigmoid(teacher_logits.detach().float() / temperature)


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Element-wise KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T))) x T^2.

    The binary cross-entropy minus the teacher's entropy: same gradient, but 0 when the
    student matches the teacher, so the loss trace shows progress instead of a floor.
    """
    _check_temperature("temperature", temperature)
    student = student_logits.float() / temperature
    teacher = teacher_logits.detach().float() / temperature
    target = torch.sigmoid(teacher)
    cross = F.binary_cross_entropy_with_logits(student, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher, target, reduction="none")
    return (cross - entropy) * temperature**2


def check_focal_gamma(gamma: float) -> None:
    """ValueError unless ``gamma`` is a finite number >= 0."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"focal gamma must be a finite number >= 0 (0: the plain KL, {FOCAL_GAMMA}: "
                         f"the default); got {gamma!r}")


def focal_weight(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """``|sigmoid(s/T) - sigmoid(t/T)|^gamma``, element-wise, detached (float32)."""
    check_focal_gamma(gamma)
    _check_temperature("temperature", temperature)
    gap = torch.sigmoid(student_logits.detach().float() / temperature) - torch.sigmoid(
        teacher_logits.detach().float() / temperature)
    return gap.abs().pow(gamma)


def dense_kd_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    temperature: float,
    fg_temperature: float = FOREGROUND_TEMPERATURE,
    focal_gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Focal sigmoid KD over dense logits (one (N, A*C, H, W) tensor per level), normalised by
    the teacher's foreground mass.

    Sum over every element of :func:`bernoulli_kl` times the detached :func:`focal_weight`
    ``|p_s - p_t|^focal_gamma`` (background anchors included: that the teacher calls them
    background is knowledge too, but one the student nearly holds weighs next to nothing),
    divided by the foreground mass ``sum sigmoid(t / fg_temperature)`` over elements, at least
    the number of images (a batch where the teacher sees nothing counts as one object per
    image). ``focal_gamma`` 0 is the plain KL sum, computed without the weight.
    """
    check_focal_gamma(focal_gamma)
    if len(student_logits) != len(teacher_logits) or not student_logits:
        raise ValueError(f"expected one student and one teacher tensor per level, got "
                         f"{len(student_logits)} and {len(teacher_logits)}")
    total, mass = 0.0, 0.0
    for s, t in zip(student_logits, teacher_logits):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher logits differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        kl = bernoulli_kl(s, t, temperature)
        if focal_gamma:
            kl = kl * focal_weight(s, t, temperature, focal_gamma)
        total = total + kl.sum()
        mass = mass + foreground_weight(t, fg_temperature).sum()
    return total / _mean_over_processes(mass).clamp(min=float(student_logits[0].shape[0]))


def _mean_over_processes(mass: torch.Tensor) -> torch.Tensor:
    """The foreground mass averaged over the processes of a distributed run (no host read).

    Each process's loss divides by the *mean* mass, so the average of the processes'
    gradients equals the gradient of the union batch divided by the union's mass, as on one
    process (the normaliser is a detached constant, like RetinaNet's foreground count).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mass
    mass = mass.detach().clone()
    dist.all_reduce(mass)
    return mass / dist.get_world_size()
