"""Channel assignment: which teacher channels each student channel is distilled from.

All cases reduce to one rectangular linear sum assignment (scipy's Hungarian-type solver):
the cost matrix [Cs, Ct] is stacked G times along the rows, and row ``g * Cs + i`` stands for
slot g of student channel i. With rows <= columns the solver picks the cheapest set of
distinct columns, so every student channel gets G distinct teacher channels and, when Ct is
not a multiple of Cs, the teacher channels left out are the worst-matching ones (not the
highest-indexed, as in the original code).

When the student has more channels than the teacher (Cs > Ct), one-to-one matching is
impossible. With ``allow_sharing`` the teacher columns are tiled ceil(Cs / Ct) times instead:
each student channel gets one teacher channel and each teacher channel serves at most
ceil(Cs / Ct) student channels, at minimum total cost.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

ArrayLike = Union[torch.Tensor, np.ndarray]


def group_size(
    num_student: int, num_teacher: int, sparse: bool = False, allow_sharing: bool = False
) -> int:
    """G, the number of teacher channels per student channel; raises on an impossible setting."""
    if num_student <= 0 or num_teacher <= 0:
        raise ValueError(f"channel counts must be positive; got Cs={num_student}, Ct={num_teacher}")
    if num_student > num_teacher:
        if not allow_sharing:
            raise ValueError(
                f"the student has more channels ({num_student}) than the teacher ({num_teacher}) at "
                "this position: only sparse matching (reducer 'SM') with channel sharing "
                "(allow_sharing=True) supports that"
            )
        return 1
    return 1 if sparse else num_teacher // num_student


def sharing_capacity(num_student: int, num_teacher: int) -> int:
    """How many student channels may share one teacher channel (1 unless Cs > Ct)."""
    return max(1, math.ceil(num_student / num_teacher))


def default_assignment(
    num_student: int, num_teacher: int, sparse: bool = False, allow_sharing: bool = False
) -> torch.Tensor:
    """The assignment of an all-equal cost matrix: student i gets teachers i, i+Cs, ... (mod Ct)."""
    groups = group_size(num_student, num_teacher, sparse, allow_sharing)
    slots = torch.arange(groups * num_student).view(groups, num_student).T
    return (slots % num_teacher).contiguous()


def _as_numpy_cost(cost: ArrayLike) -> np.ndarray:
    """A float64 host copy of ``cost`` (the one place the matching core leaves the device)."""
    if isinstance(cost, torch.Tensor):
        cost = cost.detach().to(device="cpu", dtype=torch.float64).numpy()
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D [Cs, Ct] matrix; got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix contains non-finite values (NaN or Inf)")
    return cost


def solve_assignment(
    cost: ArrayLike, sparse: bool = False, allow_sharing: bool = False
) -> torch.Tensor:
    """Optimal teacher channels for every student channel.

    Args:
        cost: [Cs, Ct] matching cost (tensor on any device, or ndarray).
        sparse: one distinct teacher channel per student channel (G = 1) instead of
            G = Ct // Cs of them.
        allow_sharing: when Cs > Ct, let teacher channels serve several student channels
            (see the module docstring); ignored when Cs <= Ct.

    Returns:
        CPU LongTensor [Cs, G] of teacher channel indices, each row sorted ascending.
    """
    cost = _as_numpy_cost(cost)
    num_student, num_teacher = cost.shape
    groups = group_size(num_student, num_teacher, sparse, allow_sharing)
    if num_student > num_teacher:
        copies = sharing_capacity(num_student, num_teacher)
        _, cols = linear_sum_assignment(np.tile(cost, (1, copies)))
        cols = cols % num_teacher
    else:
        _, cols = linear_sum_assignment(np.tile(cost, (groups, 1)))
    # Rows come back in order 0..G*Cs-1, i.e. slot-major: reshape to (G, Cs).
    assignment = np.sort(cols.reshape(groups, num_student).T, axis=1)
    return torch.from_numpy(np.ascontiguousarray(assignment)).long()


def matched_cost(cost: ArrayLike, assignment: torch.Tensor) -> float:
    """Mean cost over all (student channel, assigned teacher channel) pairs, for logging."""
    cost = torch.as_tensor(cost)
    assignment = torch.as_tensor(assignment, device=cost.device).long()
    if assignment.dim() != 2 or assignment.shape[0] != cost.shape[0]:
        raise ValueError(
            f"assignment must be [Cs, G] with Cs={cost.shape[0]}; got {tuple(assignment.shape)}"
        )
    return float(cost.gather(1, assignment).double().mean())
