"""Shape and value checks shared by the cost tracker and the distiller.

Shape checks read only tensor metadata, so they never synchronise with the device.
"""

from __future__ import annotations

from typing import Iterable, List

import torch


def check_feature_pair(
    student: torch.Tensor,
    teacher: torch.Tensor,
    num_student_channels: int,
    num_teacher_channels: int,
    where: str,
) -> None:
    """Raise ValueError unless student/teacher are (N, C, H, W) maps that can be compared.

    Both must be 4-D with equal batch and spatial sizes, and carry the configured channel
    counts. ``where`` names the caller (e.g. a distillation position) in the message.
    """
    s_shape, t_shape = tuple(student.shape), tuple(teacher.shape)
    shapes = f"student {s_shape}, teacher {t_shape}"
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"{where}: features must be 4-D (N, C, H, W); got {shapes}")
    if s_shape[0] != t_shape[0]:
        raise ValueError(f"{where}: batch sizes differ; got {shapes}")
    if s_shape[2:] != t_shape[2:]:
        raise ValueError(
            f"{where}: spatial sizes differ; got {shapes}. Tap teacher and student at "
            "positions of equal stride (resizing is not supported)"
        )
    if s_shape[1] != num_student_channels or t_shape[1] != num_teacher_channels:
        raise ValueError(
            f"{where}: expected {num_student_channels} student and {num_teacher_channels} "
            f"teacher channels; got {shapes}"
        )


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise FloatingPointError if ``tensor`` holds NaN or Inf.

    This reads a device value on the host (a synchronisation): call it only outside the
    training step's hot path, or where a sync is acceptable.
    """
    if not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{what} contain non-finite values (NaN or Inf)")


def distributed_world_size() -> int:
    """World size of the default process group, or 1 when torch.distributed is not in use."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def repeated(values: Iterable) -> List:
    """The values that occur more than once, sorted (empty when all are distinct): the one
    distinct-names check of pathway, position and weighting names."""
    values = list(values)
    return sorted({v for v in values if values.count(v) > 1})
