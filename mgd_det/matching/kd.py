"""Hinton knowledge distillation on logits, to combine with MGD's feature loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KD_KINDS = ("softmax", "sigmoid")


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
