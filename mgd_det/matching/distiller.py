"""MatchingDistiller: per-position student norm, channel assignment, margins and MGD loss."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

from ._checks import check_feature_pair, check_finite, distributed_world_size
from .assignment import default_assignment, matched_cost, solve_assignment
from .cost import ChannelCostTracker
from .loss import partial_l2_loss
from .reducers import check_reducer, reduce_teacher
from .weighting import LossWeighting

logger = logging.getLogger(__name__)

STUDENT_NORMS = ("BN", "SyncBN", "GN", "none")


@dataclass
class PositionSpec:
    """One distillation position: a name (e.g. "c3") and the channel counts on each side."""

    name: str
    student_channels: int
    teacher_channels: int
    factor: float = 1.0

    def __post_init__(self):
        if not self.name or not self.name.isidentifier():
            raise ValueError(
                f"position name {self.name!r} must be a non-empty identifier (it names buffers)"
            )
        if self.student_channels <= 0 or self.teacher_channels <= 0:
            raise ValueError(f"position {self.name!r}: channel counts must be positive")
        if not math.isfinite(self.factor):
            raise ValueError(f"position {self.name!r}: factor must be finite; got {self.factor}")


def _student_norm(kind: str, channels: int, num_groups: int, name: str) -> nn.Module:
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "GN":
        groups = min(num_groups, channels)
        if channels % groups:
            raise ValueError(
                f"position {name!r}: GroupNorm with {groups} groups does not divide {channels} "
                "channels; change num_groups"
            )
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class MatchingDistiller(nn.Module):
    """Matching Guided Distillation over several feature positions.

    Per position it owns the student-side norm layer (trained with the student, dropped at
    inference), the current assignment ``assignment_<name>`` [Cs, G], teacher margins
    ``margin_<name>`` [Ct] with the flag ``margin_set_<name>``, and a cost tracker. All of
    them are buffers or sub-modules, so a checkpoint restores them; the trackers' buffers are
    transient and not saved. ``assigned`` stays False until the first solve.

    ``forward`` returns ``{"loss_mgd_<name>": factor * weight * loss / N}``, where loss is the
    summed partial L2 loss of the normalised student features against the reduced teacher
    target and N the batch size (the original code divided the sum by images per batch, so
    its factors carry over). It never synchronises with the device.

    The assignment is updated by coordinate descent: ``start_tracking()``, ``track(...)`` on K
    batches with both nets in eval mode, then ``finish_tracking()``.

    Args:
        positions: the distillation positions.
        reducer: one of REDUCERS; "SM" uses sparse (one-to-one) matching, the others the
            dense assignment with G = Ct // Cs teacher channels per student channel.
        student_norm: "BN", "SyncBN", "GN" or "none".
        weighting: optional per-position weights (its names must cover the positions).
        num_groups: groups for "GN" (min(num_groups, Cs), must divide Cs).
        allow_sharing: allow Cs > Ct with reducer "SM" (teacher channels shared by at most
            ceil(Cs / Ct) student channels).
    """

    def __init__(
        self,
        positions: List[PositionSpec],
        reducer: str = "AMP",
        student_norm: str = "BN",
        weighting: Optional[LossWeighting] = None,
        num_groups: int = 32,
        allow_sharing: bool = False,
    ):
        super().__init__()
        check_reducer(reducer)
        if student_norm not in STUDENT_NORMS:
            raise ValueError(
                f"unknown student_norm {student_norm!r}; valid values are {', '.join(STUDENT_NORMS)}"
            )
        if not positions:
            raise ValueError("MatchingDistiller needs at least one position")
        names = [p.name for p in positions]
        if len(set(names)) != len(names):
            raise ValueError(f"position names must be unique; got {names}")
        if weighting is not None:
            missing = sorted(set(names) - set(weighting.names))
            if missing:
                raise ValueError(f"the loss weighting has no weight for positions {missing}")
        self.positions = {p.name: p for p in positions}
        self.reducer = reducer
        self.sparse = reducer == "SM"
        self.allow_sharing = bool(allow_sharing)
        self.weighting = weighting
        self.norms = nn.ModuleDict()
        self.trackers = nn.ModuleDict()
        for p in positions:
            cs, ct = p.student_channels, p.teacher_channels
            if cs > ct and not (self.sparse and self.allow_sharing):
                raise ValueError(
                    f"position {p.name!r}: the student has more channels ({cs}) than the teacher "
                    f"({ct}); only reducer='SM' with allow_sharing=True supports that"
                )
            self.norms[p.name] = _student_norm(student_norm, cs, num_groups, p.name)
            self.trackers[p.name] = ChannelCostTracker(
                cs, ct, persistent=False, name=f"position {p.name!r}"
            )
            self.register_buffer(
                f"assignment_{p.name}", default_assignment(cs, ct, self.sparse, self.allow_sharing)
            )
            self.register_buffer(f"margin_{p.name}", torch.zeros(ct, dtype=torch.float32))
            self.register_buffer(f"margin_set_{p.name}", torch.zeros((), dtype=torch.bool))
        self.register_buffer("assigned", torch.zeros((), dtype=torch.bool))

    @property
    def position_names(self):
        return tuple(self.positions)

    def assignment(self, name: str) -> torch.Tensor:
        return getattr(self, f"assignment_{name}")

    def margin(self, name: str) -> torch.Tensor:
        return getattr(self, f"margin_{name}")

    # ---------------------------------------------------------------- validation helpers
    def _check_keys(self, feats: Mapping[str, torch.Tensor], side: str) -> None:
        missing = sorted(set(self.positions) - set(feats))
        extra = sorted(set(feats) - set(self.positions))
        if missing or extra:
            raise ValueError(
                f"{side} features must have exactly the positions {list(self.positions)}; "
                f"missing {missing}, unexpected {extra}"
            )

    def _pairs(self, student_feats, teacher_feats):
        """Validated (name, spec, student, teacher) per position; metadata checks only."""
        self._check_keys(student_feats, "student")
        self._check_keys(teacher_feats, "teacher")
        for name, spec in self.positions.items():
            s, t = student_feats[name], teacher_feats[name]
            check_feature_pair(
                s, t, spec.student_channels, spec.teacher_channels, f"position {name!r}"
            )
            yield name, spec, s, t

    def check_finite(self, feats: Mapping[str, torch.Tensor], side: str = "") -> None:
        """Raise FloatingPointError naming the first position with NaN/Inf features.

        Synchronises with the device: optional, call it outside the hot path if wanted.
        """
        for name, feat in feats.items():
            check_finite(feat, f"{side} features at position {name!r}".strip())

    # ------------------------------------------------------------------------ margins
    def set_margins(self, margins: Mapping[str, Optional[torch.Tensor]]) -> None:
        """Set per-teacher-channel margins; None means no margin (plain L2) at that position.

        Positions not in ``margins`` keep their current margins.
        """
        unknown = sorted(set(margins) - set(self.positions))
        if unknown:
            raise ValueError(
                f"margins given for unknown positions {unknown}; known: {list(self.positions)}"
            )
        for name, value in margins.items():
            buffer, flag = self.margin(name), getattr(self, f"margin_set_{name}")
            if value is None:
                buffer.zero_()
                flag.fill_(False)
                continue
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"margin for position {name!r} must have shape {tuple(buffer.shape)}; "
                    f"got {tuple(value.shape)}"
                )
            check_finite(value, f"margins for position {name!r}")
            buffer.copy_(value.detach())
            flag.fill_(True)

    # ------------------------------------------------------------------------ loss
    def forward(
        self, student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        weights = self.weighting() if self.weighting is not None else {}
        losses = {}
        for name, spec, s, t in self._pairs(student_feats, teacher_feats):
            target, margin = reduce_teacher(
                t.detach(), self.assignment(name), self.margin(name), self.reducer
            )
            loss = partial_l2_loss(
                self.norms[name](s), target, margin, getattr(self, f"margin_set_{name}")
            )
            loss = loss * (spec.factor / s.shape[0])
            if name in weights:
                loss = loss * weights[name]
            losses[f"loss_mgd_{name}"] = loss
        return losses

    # ------------------------------------------------------------------------ matching
    def start_tracking(self) -> None:
        for tracker in self.trackers.values():
            tracker.reset()

    @torch.no_grad()
    def track(
        self, student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor]
    ) -> None:
        """Accumulate matching costs on raw (pre-ReLU, un-normalised) features of one batch."""
        for name, _, s, t in self._pairs(student_feats, teacher_feats):
            self.trackers[name].update(s, t)

    def finish_tracking(self) -> Dict[str, Dict[str, float]]:
        """All-reduce the tracked costs, solve and install the new assignments.

        Returns per position {"mean_matched_cost", "num_changed", "solve_seconds"}.
        """
        for tracker in self.trackers.values():
            tracker.all_reduce()
        return self.solve_and_broadcast()

    def solve_and_broadcast(
        self, solve_fn: Callable = solve_assignment
    ) -> Dict[str, Dict[str, float]]:
        """Solve every position from the trackers' mean costs and update the assignments.

        In a multi-process group only rank 0 solves; the result is broadcast so that all
        ranks end with identical assignments (the trackers must hold all-reduced costs).
        ``solve_seconds`` is 0 on the ranks that did not solve.
        """
        world = distributed_world_size()
        solving = world == 1 or torch.distributed.get_rank() == 0
        stats = {}
        # All statistics are checked (tracked images, finiteness) before any assignment
        # changes, so a failed update leaves every position as it was.
        mean_costs = {name: self.trackers[name].mean_cost() for name in self.positions}
        for name, spec in self.positions.items():
            buffer = self.assignment(name)
            mean_cost = mean_costs[name]
            seconds = 0.0
            if solving:
                start = time.perf_counter()
                new = solve_fn(mean_cost, sparse=self.sparse, allow_sharing=self.allow_sharing)
                seconds = time.perf_counter() - start
                new = new.to(buffer.device).contiguous()
                if tuple(new.shape) != tuple(buffer.shape):
                    raise RuntimeError(
                        f"position {name!r}: solver returned shape {tuple(new.shape)}, "
                        f"expected {tuple(buffer.shape)}"
                    )
            else:
                # Contiguous on purpose: collectives move raw memory.
                new = torch.empty(buffer.shape, dtype=buffer.dtype, device=buffer.device)
            if world > 1:
                torch.distributed.broadcast(new, src=0)
            num_changed = int((new != buffer).any(dim=1).sum())
            buffer.copy_(new)
            stats[name] = {
                "mean_matched_cost": matched_cost(mean_cost, buffer),
                "num_changed": num_changed,
                "solve_seconds": seconds,
            }
            logger.info(
                "MGD assignment %s (%dx%d): matched cost %.4f, %d student channels changed, "
                "solved in %.3fs",
                name,
                spec.student_channels,
                spec.teacher_channels,
                stats[name]["mean_matched_cost"],
                num_changed,
                seconds,
            )
        self.assigned.fill_(True)
        return stats
