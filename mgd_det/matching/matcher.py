"""ChannelMatcher: the matching state of one (position, group size) pair.

Every pathway that distils a position through an assignment (MGD's reducers SM / RD / AMP /
SP) reads it from a matcher; pathways that share a position and a group size G share one
matcher, so they share one cost tracker, one assignment and one solve per update.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ._checks import check_finite, distributed_world_size
from .assignment import default_assignment, group_size, matched_cost, solve_assignment
from .cost import ChannelCostTracker

logger = logging.getLogger(__name__)


def matcher_key(position: str, groups: int) -> str:
    """How a matcher is named in ``state_dict`` and logs: ``<position>_g<G>``."""
    return f"{position}_g{groups}"


class ChannelMatcher(nn.Module):
    """Assignment, teacher margins and cost tracker of one position at one group size.

    Buffers (all checkpointed): ``assignment`` [Cs, G] long, ``margin`` [Ct] and
    ``margin_set`` (bool; False means no margin, plain L2, e.g. at FPN outputs). The tracker's
    buffers are transient statistics of one update and are not saved.

    G = 1 is a one-to-one (sparse) matching; G = Ct // Cs gives every student channel G
    distinct teacher channels (the worst-matching Ct - G*Cs teacher channels are left out).
    With ``allow_sharing`` and Cs > Ct, teacher channels serve several student channels.
    """

    def __init__(
        self,
        position: str,
        student_channels: int,
        teacher_channels: int,
        sparse: bool,
        allow_sharing: bool = False,
    ):
        super().__init__()
        self.position = position
        self.student_channels = int(student_channels)
        self.teacher_channels = int(teacher_channels)
        self.allow_sharing = bool(allow_sharing)
        self.groups = group_size(student_channels, teacher_channels, sparse, allow_sharing)
        self.sparse = self.groups == 1  # G = 1 dense and sparse matching are the same problem
        self.name = matcher_key(position, self.groups)
        self.tracker = ChannelCostTracker(
            student_channels, teacher_channels, persistent=False, name=f"position {position!r}"
        )
        self.register_buffer(
            "assignment",
            default_assignment(student_channels, teacher_channels, self.sparse, self.allow_sharing),
        )
        self.register_buffer("margin", torch.zeros(teacher_channels, dtype=torch.float32))
        self.register_buffer("margin_set", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ margins
    def set_margin(self, value: Optional[torch.Tensor]) -> None:
        """Per-teacher-channel margins [Ct]; None means no margin (plain L2)."""
        if value is None:
            self.margin.zero_()
            self.margin_set.fill_(False)
            return
        if tuple(value.shape) != tuple(self.margin.shape):
            raise ValueError(
                f"margin for position {self.position!r} must have shape {tuple(self.margin.shape)}; "
                f"got {tuple(value.shape)}"
            )
        check_finite(value, f"margins for position {self.position!r}")
        self.margin.copy_(value.detach())
        self.margin_set.fill_(True)

    # ------------------------------------------------------------------ tracking
    def start_tracking(self) -> None:
        self.tracker.reset()

    @torch.no_grad()
    def track(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> None:
        """Accumulate the cost of one batch of raw (pre-ReLU, un-normalised) features."""
        self.tracker.update(student_feat, teacher_feat)

    def mean_cost(self) -> torch.Tensor:
        """All-reduced mean cost [Cs, Ct]; validates that something finite was tracked."""
        self.tracker.all_reduce()
        return self.tracker.mean_cost()

    def propose(self, mean_cost: torch.Tensor, solve_fn: Callable = solve_assignment) -> torch.Tensor:
        """Solve the assignment for ``mean_cost`` on the host (no collective, no state change)."""
        new = solve_fn(mean_cost, sparse=self.sparse, allow_sharing=self.allow_sharing)
        if tuple(new.shape) != tuple(self.assignment.shape):
            raise RuntimeError(
                f"position {self.position!r}: solver returned shape {tuple(new.shape)}, "
                f"expected {tuple(self.assignment.shape)}"
            )
        return new

    def install(self, proposal: Optional[torch.Tensor], mean_cost: torch.Tensor, seconds: float = 0.0) -> Dict[str, float]:
        """Broadcast rank 0's ``proposal`` (other ranks pass None) and make it the assignment.

        Every rank must call this at the same point; all end with identical assignments.
        """
        if distributed_world_size() > 1:
            # Contiguous on purpose: collectives move raw memory.
            new = torch.empty_like(self.assignment, memory_format=torch.contiguous_format)
            if proposal is not None:
                new.copy_(proposal)
            torch.distributed.broadcast(new, src=0)
        else:
            if proposal is None:
                raise RuntimeError(f"position {self.position!r}: no assignment was proposed")
            new = proposal.to(self.assignment.device)
        num_changed = int((new != self.assignment).any(dim=1).sum())
        self.assignment.copy_(new)
        stats = {
            "mean_matched_cost": matched_cost(mean_cost, self.assignment),
            "num_changed": num_changed,
            "solve_seconds": seconds,
        }
        logger.info(
            "MGD assignment %s (%dx%d, G=%d): matched cost %.4f, %d student channels changed, "
            "solved in %.3fs",
            self.name, self.student_channels, self.teacher_channels, self.groups,
            stats["mean_matched_cost"], num_changed, seconds,
        )
        return stats

    def solve(self, mean_cost: torch.Tensor, solve_fn: Callable = solve_assignment) -> Dict[str, float]:
        """Synchronous update: rank 0 solves, every rank installs its answer.

        ``solve_seconds`` is 0 on the ranks that did not solve.
        """
        proposal, seconds = None, 0.0
        if distributed_world_size() == 1 or torch.distributed.get_rank() == 0:
            start = time.perf_counter()
            proposal = self.propose(mean_cost, solve_fn)
            seconds = time.perf_counter() - start
        return self.install(proposal, mean_cost, seconds)
