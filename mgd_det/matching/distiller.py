"""PathwayDistiller: every distillation pathway of a teacher/student pair, and one weighting.

It owns the pathways (their student-side norms and connectors are trained with the student
and dropped at inference), one :class:`~mgd_det.matching.matcher.ChannelMatcher` per
(position, group size) shared by the matched pathways there, and the loss weighting.

    distiller = PathwayDistiller([PathwaySpec("AMP", "c3", 2e-7), PathwaySpec("SM", "c3", 1e-7)],
                                 channels={"c3": (128, 512)})
    losses = distiller(NetOutputs(student_feats), TeacherOutput(teacher_feats))

Matching is coordinate descent: ``start_tracking()``, ``track(...)`` on K batches with both
nets in eval mode, then ``finish_tracking()``. The forward pass never synchronises with
the device.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ._checks import repeated
from .assignment import solve_assignment
from .background_solve import SolveJob
from .families import BuildContext, build_pathway, reads
from .held_factors import HeldFactors
from .matcher import ChannelMatcher
from .outputs import HEAD_OUTPUTS, NetOutputs, TeacherOutput
from .pathways import PathwaySpec
from .weighting import ConstantWeighting, LossWeighting
from ..errors import ConfigError

logger = logging.getLogger(__name__)


class PathwayDistiller(nn.Module):
    """Distillation losses of all pathways, weighted by one :class:`LossWeighting`.

    Args:
        specs: the pathways (unique names); each may set options of its family.
        channels: ``{position: (student channels, teacher channels)}`` for every position a
            pathway reads.
        weighting: the loss weighting; default: constant, each pathway's ``factor``.
        num_classes: classes of the dense head (the BOX family reads per-class logits).
        option_defaults: defaults of family options by option name, under the options a spec
            sets (e.g. ``{"student_norm": "GN", "temperature": 2.0}``); each family reads the
            ones it declares, its own defaults fill the rest (:mod:`.families`).
    """

    def __init__(
        self,
        specs: Sequence[PathwaySpec],
        channels: Mapping[str, Tuple[int, int]],
        weighting: Optional[LossWeighting] = None,
        num_classes: int = 0,
        option_defaults: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        specs = list(specs)
        if not specs:
            raise ConfigError("a distiller needs at least one pathway")
        names = [s.name for s in specs]
        duplicates = repeated(names)
        if duplicates:
            raise ConfigError(f"pathway names must be unique; {duplicates} appear more than once (name them: 'NAME=FAMILY:POSITION')")
        self.specs = specs
        self.matchers = nn.ModuleDict()
        self.pathways = nn.ModuleDict()
        # detached factors of the losses (KD's focal weight), held by DistPro's meta-step
        self.held_factors = HeldFactors()
        context = BuildContext(channels, num_classes, self.matchers, dict(option_defaults or {}), self.held_factors)
        for spec in specs:
            self.pathways[spec.name] = build_pathway(spec, context)
        self.weighting = weighting if weighting is not None else ConstantWeighting({s.name: s.factor for s in specs})
        missing = sorted(set(names) - set(self.weighting.names))
        if missing:
            raise ConfigError(f"the loss weighting has no weight for pathways {missing}")
        self.register_buffer("assigned", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ queries
    @property
    def pathway_names(self) -> Tuple[str, ...]:
        return tuple(self.pathways)

    @property
    def positions(self) -> List[str]:
        """Every student feature position some pathway reads, in first-use order."""
        return list(dict.fromkeys(s.position for s in self.specs if s.position))

    @property
    def teacher_positions(self) -> List[str]:
        """Every teacher feature position some pathway reads, in first-use order."""
        return list(dict.fromkeys(s.source for s in self.specs if s.source))

    @property
    def reads(self) -> FrozenSet[str]:
        """What the pathways read: ``"features"`` and the kinds of head outputs
        (:data:`~mgd_det.matching.outputs.HEAD_OUTPUTS`) the model must compute."""
        return frozenset(reads(s.family) for s in self.specs)

    @property
    def needs_head(self) -> bool:
        """Whether a pathway reads head outputs (the teacher then runs its whole backbone)."""
        return any(kind in HEAD_OUTPUTS for kind in self.reads)

    def matchers_at(self, position: str) -> List[ChannelMatcher]:
        return [m for m in self.matchers.values() if m.position == position]

    def assignment(self, position: str) -> torch.Tensor:
        """The assignment at ``position`` (a matcher key like ``res4_g4`` also works)."""
        if position in self.matchers:
            return self.matchers[position].assignment
        found = self.matchers_at(position)
        if len(found) != 1:
            raise KeyError(f"{len(found)} matchers at position {position!r}; ask by key: {list(self.matchers)}")
        return found[0].assignment

    # ------------------------------------------------------------------ margins
    def set_margins(self, margins: Mapping[str, Optional[torch.Tensor]]) -> None:
        """Per-teacher-channel margins by position; None means no margin (plain L2)."""
        unknown = sorted(set(margins) - {m.position for m in self.matchers.values()})
        if unknown:
            raise ConfigError(f"margins given for positions {unknown} that no matched pathway reads")
        for matcher in self.matchers.values():
            if matcher.position in margins:
                matcher.set_margin(margins[matcher.position])

    # ------------------------------------------------------------------ loss
    def forward(self, student: NetOutputs, teacher: TeacherOutput) -> Dict[str, torch.Tensor]:
        """``{"loss_<pathway>": weighted loss}`` for every pathway."""
        return self.weighted(self.raw_losses(student, teacher))

    def raw_losses(self, student: NetOutputs, teacher: TeacherOutput) -> Dict[str, torch.Tensor]:
        """``{pathway name: unweighted per-image loss}`` (what a learned weighting needs)."""
        self._check_positions(student.features, "student", self.positions)
        self._check_positions(teacher.features, "teacher", self.teacher_positions)
        teacher_features = teacher.features_for(student.features)
        return {name: pathway(student, teacher, teacher_features) for name, pathway in self.pathways.items()}

    def weighted(self, raw: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The weighting applied to raw pathway losses, keyed ``loss_<pathway>``."""
        return {f"loss_{name}": loss for name, loss in self.weighting(raw).items()}

    @staticmethod
    def _check_positions(feats: Mapping[str, torch.Tensor], side: str, positions: Sequence[str]) -> None:
        missing = [p for p in positions if p not in feats]
        if missing:
            raise ConfigError(f"{side} features lack position(s) {missing} read by the pathways; got {sorted(feats)}")

    # ------------------------------------------------------------------ matching
    def start_tracking(self) -> None:
        for matcher in self.matchers.values():
            matcher.start_tracking()

    @torch.no_grad()
    def track(self, student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor]) -> None:
        """Accumulate matching costs on raw (pre-ReLU, un-normalised) features of one batch."""
        for matcher in self.matchers.values():
            matcher.track(student_feats[matcher.position], teacher_feats[matcher.position])

    def mean_costs(self) -> Dict[str, torch.Tensor]:
        """All-reduced mean cost per matcher; every matcher validated before anything changes."""
        return {key: matcher.mean_cost() for key, matcher in self.matchers.items()}

    def solve_jobs(self, costs: Mapping[str, torch.Tensor]) -> Dict[str, SolveJob]:
        """The host solve problems of an update, e.g. for a :class:`BackgroundSolver`."""
        return {
            key: SolveJob(cost.detach().cpu(), self.matchers[key].sparse, self.matchers[key].allow_sharing)
            for key, cost in costs.items()
        }

    def install(
        self, solved: Optional[Mapping[str, Tuple[torch.Tensor, float]]], costs: Mapping[str, torch.Tensor]
    ) -> Dict[str, Dict[str, float]]:
        """Install solved assignments (rank 0's ``{key: (assignment, seconds)}``; None on the
        other ranks, which receive them by broadcast). Every rank calls it at the same point."""
        stats = {}
        for key, cost in costs.items():
            proposal, seconds = solved[key] if solved is not None else (None, 0.0)
            stats[key] = self.matchers[key].install(proposal, cost, seconds)
        self.assigned.fill_(True)
        return stats

    def finish_tracking(self, solve_fn: Callable = solve_assignment) -> Dict[str, Dict[str, float]]:
        """All-reduce the tracked costs, solve once per matcher, install the assignments.

        Returns per matcher key {"mean_matched_cost", "num_changed", "solve_seconds"}.
        """
        costs = self.mean_costs()
        stats = {key: self.matchers[key].solve(cost, solve_fn) for key, cost in costs.items()}
        self.assigned.fill_(True)
        return stats


def mgd_pathway_specs(positions: Sequence[Tuple[str, float]], reducer: str) -> List[PathwaySpec]:
    """The common case: one MGD pathway per position, named ``mgd_<position>``."""
    return [PathwaySpec(reducer, name, factor, name=f"mgd_{name}") for name, factor in positions]
