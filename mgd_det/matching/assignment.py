"""Channel assignment: which teacher channels each student channel is distilled from.

All cases reduce to one rectangular linear sum assignment (scipy's Hungarian-type solver):
the cost matrix [Cs, Ct] is stacked G times along the rows, and row ``g * Cs + i`` stands for
slot g of student channel i. With rows <= columns the solver picks the cheapest set of
distinct columns, so every student channel gets G distinct teacher channels and, when Ct is
not a multiple of Cs, the teacher channels left out are the worst-matching ones (not the
highest-indexed, as in the original code).

Speed: with G > 1 the stacked problem has G identical copies of every row, ties on which
scipy's shortest-augmenting-path solver is slow (about 2 s for the 2048² res5 problem of
R50 -> R18 here). The same optimum is found as a min-cost flow, source -> student (capacity G)
-> teacher (capacity 1) -> sink, on Cs x Ct arcs instead of Ct²: OR-Tools' cost-scaling
solver takes about 0.65 s for it. It needs integer costs, so costs are scaled by 1e8 and
rounded (costs lie in [0, 4]; the total can differ from the float optimum by at most
Cs * G * 5e-9). Without OR-Tools installed the stacked scipy problem is solved instead.

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

try:
    from ortools.graph.python import min_cost_flow
except ImportError:  # pragma: no cover - OR-Tools is in requirements.txt
    min_cost_flow = None

ArrayLike = Union[torch.Tensor, np.ndarray]
# Float costs -> integers for the min-cost-flow solver (see the module docstring).
_FLOW_COST_SCALE = 1e8


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


def _grouped_assignment_by_flow(cost: np.ndarray, groups: int) -> np.ndarray:
    """[Cs, G] teacher columns: each student channel gets G distinct ones, minimum total cost."""
    num_student, num_teacher = cost.shape
    source, sink = num_student + num_teacher, num_student + num_teacher + 1
    students, teachers = np.arange(num_student), num_student + np.arange(num_teacher)
    flow = min_cost_flow.SimpleMinCostFlow()
    # Arc order: source->student, student->teacher (row-major, the ones we read back), teacher->sink.
    tails = np.concatenate([np.full(num_student, source), np.repeat(students, num_teacher), teachers])
    heads = np.concatenate([students, np.tile(teachers, num_student), np.full(num_teacher, sink)])
    capacities = np.concatenate(
        [np.full(num_student, groups), np.ones(num_student * num_teacher + num_teacher)]
    ).astype(np.int64)
    unit_costs = np.concatenate(
        [
            np.zeros(num_student),
            np.rint(cost.ravel() * _FLOW_COST_SCALE),
            np.zeros(num_teacher),
        ]
    ).astype(np.int64)
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, capacities, unit_costs)
    flow.set_nodes_supplies(np.array([source, sink]), np.array([groups * num_student, -groups * num_student]))
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise RuntimeError(f"min-cost-flow assignment failed with status {status}")
    used = flow.flows(np.arange(num_student, num_student + num_student * num_teacher)).reshape(
        num_student, num_teacher
    )
    return np.nonzero(used > 0)[1].reshape(num_student, groups)


def solve_assignment(
    cost: ArrayLike, sparse: bool = False, allow_sharing: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Optimal teacher channels for every student channel.

    Args:
        cost: [Cs, Ct] matching cost (tensor on any device, or ndarray).
        sparse: one distinct teacher channel per student channel (G = 1) instead of
            G = Ct // Cs of them.
        allow_sharing: when Cs > Ct, let teacher channels serve several student channels
            (see the module docstring); ignored when Cs <= Ct.
        backend: "auto" (min-cost flow for G > 1 when OR-Tools is available, else scipy),
            "scipy" (always the stacked linear sum assignment) or "flow".

    Returns:
        CPU LongTensor [Cs, G] of teacher channel indices, each row sorted ascending.
    """
    if backend not in ("auto", "scipy", "flow"):
        raise ValueError(f"unknown assignment backend {backend!r}; use 'auto', 'scipy' or 'flow'")
    if backend == "flow" and min_cost_flow is None:
        raise ImportError("backend 'flow' needs OR-Tools: pip install ortools")
    cost = _as_numpy_cost(cost)
    num_student, num_teacher = cost.shape
    groups = group_size(num_student, num_teacher, sparse, allow_sharing)
    use_flow = groups > 1 and (backend == "flow" or (backend == "auto" and min_cost_flow is not None))
    if use_flow:
        assignment = np.sort(_grouped_assignment_by_flow(cost, groups), axis=1)
        return torch.from_numpy(np.ascontiguousarray(assignment)).long()
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
