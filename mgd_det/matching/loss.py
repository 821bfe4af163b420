"""The partial L2 distillation loss (Heo et al., ICCV 2019) used by MGD."""

from __future__ import annotations

from typing import Optional

import torch


def partial_l2_loss(
    student: torch.Tensor,
    target: torch.Tensor,
    margin: Optional[torch.Tensor] = None,
    margin_enabled: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Summed squared error of ``student`` against a (detached) teacher ``target``.

    With a margin: target = max(target, margin) and only elements where the student is above
    the target or the target is positive count, i.e. a student value below a target the
    teacher's ReLU would zero is not penalised. Without a margin: plain sum of squares.

    Args:
        margin: broadcastable to ``target`` (e.g. [1, C, 1, 1]) or None.
        margin_enabled: optional bool scalar tensor; where False the margin is ignored and
            the loss is plain L2. The choice is made on the device (no host sync), so a
            margin that may or may not be set can live in buffers.

    Returns:
        The sum over all elements (callers normalise), computed in float32 or wider (float64
        inputs stay float64, e.g. for DistPro's float64 hypergradient checks).
    """
    if student.shape != target.shape:
        raise ValueError(
            f"student and target shapes differ: {tuple(student.shape)} vs {tuple(target.shape)}"
        )
    dtype = torch.promote_types(student.dtype, torch.float32)
    target = target.detach().to(dtype)
    student = student.to(dtype)
    if margin is None:
        return (student - target).pow(2).sum()
    margin = margin.detach().to(dtype)
    try:
        broadcastable = torch.broadcast_shapes(margin.shape, target.shape) == target.shape
    except RuntimeError:
        broadcastable = False
    if not broadcastable:
        raise ValueError(
            f"margin of shape {tuple(margin.shape)} does not broadcast to the target {tuple(target.shape)}"
        )
    raised = torch.maximum(target, margin)
    keep = (student > raised) | (raised > 0)
    if margin_enabled is not None:
        raised = torch.where(margin_enabled, raised, target)
        keep = keep | ~margin_enabled
    return ((student - raised).pow(2) * keep).sum()
