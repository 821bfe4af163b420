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
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ._checks import repeated
from .assignment import group_size, solve_assignment
from .background_solve import SolveJob
from .matcher import ChannelMatcher, matcher_key
from .outputs import NetOutputs, TeacherOutput
from .families import BuildContext, build_pathway, reads_head, register_family
from .kd import FOCAL_GAMMA, FOREGROUND_TEMPERATURE, check_focal_gamma
from .pathways import (
    MatchedFeaturePathway,
    OutputBoxPathway,
    OutputKDPathway,
    Pathway,
    PathwaySpec,
    StandardizedFeaturePathway,
    student_norm,
)
from .reducers import REDUCERS
from .weighting import ConstantWeighting, LossWeighting
from ..errors import ConfigError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- built-in families
# Registration order is the order error messages list the families in.
def _feature_channels(spec: PathwaySpec, ctx: BuildContext) -> Tuple[int, int]:
    if spec.position not in ctx.channels:
        raise ConfigError(f"pathway {spec.name!r}: no channel counts for position {spec.position!r}")
    return ctx.channels[spec.position]


def _build_matched(spec: PathwaySpec, ctx: BuildContext) -> Pathway:
    """SM / RD / AMP / SP: one matcher per (position, group size), shared by its pathways."""
    cs, ct = _feature_channels(spec, ctx)
    where = f"pathway {spec.name!r} (position {spec.position!r})"
    sparse = spec.family == "SM"
    if cs > ct and not (sparse and ctx.allow_sharing):
        raise ConfigError(
            f"{where}: the student has more channels ({cs}) than the teacher ({ct}); only "
            "the SM family with channel sharing (allow_sharing True) supports that"
        )
    key = matcher_key(spec.position, group_size(cs, ct, sparse, ctx.allow_sharing))
    if key not in ctx.matchers:
        ctx.matchers[key] = ChannelMatcher(spec.position, cs, ct, sparse, ctx.allow_sharing)
    return MatchedFeaturePathway(spec, ctx.matchers[key], student_norm(ctx.student_norm, cs, ctx.num_groups, where))


for _reducer in REDUCERS:
    register_family(_reducer)(_build_matched)


@register_family("PKD")
def _build_pkd(spec: PathwaySpec, ctx: BuildContext) -> Pathway:
    return StandardizedFeaturePathway(spec, *_feature_channels(spec, ctx))


@register_family("KD", reads_head=True)
def _build_kd(spec: PathwaySpec, ctx: BuildContext) -> Pathway:
    return OutputKDPathway(spec, ctx.kd_temperature, ctx.kd_fg_temperature, ctx.kd_focal_gamma)


@register_family("BOX", reads_head=True)
def _build_box(spec: PathwaySpec, ctx: BuildContext) -> Pathway:
    if ctx.num_classes <= 0:
        raise ConfigError(f"pathway {spec.name!r}: the BOX family needs the head's number of classes")
    return OutputBoxPathway(spec, ctx.num_classes, fg_temperature=ctx.kd_fg_temperature)


class PathwayDistiller(nn.Module):
    """Distillation losses of all pathways, weighted by one :class:`LossWeighting`.

    Args:
        specs: the pathways (unique names).
        channels: ``{position: (student channels, teacher channels)}`` for every position a
            pathway reads.
        student_norm: norm on student features in matched pathways: "BN", "SyncBN", "GN", "none".
        num_groups: groups for "GN" (min(num_groups, Cs), must divide Cs).
        allow_sharing: allow Cs > Ct with the SM family (teacher channels shared).
        weighting: the loss weighting; default: constant, each pathway's ``factor``.
        kd_temperature: temperature of the KD family.
        kd_fg_temperature: foreground temperature of the KD and BOX families (the weight of an
            anchor is sigmoid(teacher logit / kd_fg_temperature); see :mod:`.kd`).
        kd_focal_gamma: focal exponent of the KD family (each element's KL is weighted by
            |p_s - p_t|^kd_focal_gamma; 0: the plain KL; see :mod:`.kd`).
        num_classes: classes of the dense head (the BOX family reads per-class logits).
    """

    def __init__(
        self,
        specs: Sequence[PathwaySpec],
        channels: Mapping[str, Tuple[int, int]],
        student_norm: str = "BN",
        num_groups: int = 32,
        allow_sharing: bool = False,
        weighting: Optional[LossWeighting] = None,
        kd_temperature: float = 1.0,
        num_classes: int = 0,
        kd_fg_temperature: float = FOREGROUND_TEMPERATURE,
        kd_focal_gamma: float = FOCAL_GAMMA,
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
        if not kd_fg_temperature > 0:
            raise ConfigError(f"kd_fg_temperature must be positive; got {kd_fg_temperature}")
        try:
            check_focal_gamma(kd_focal_gamma)
        except ValueError as err:
            raise ConfigError(f"kd_focal_gamma: {err}") from err
        context = BuildContext(channels, student_norm, num_groups, allow_sharing, kd_temperature, num_classes,
                               self.matchers, kd_fg_temperature, kd_focal_gamma)
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
        """Every feature position some pathway reads, in first-use order."""
        return list(dict.fromkeys(s.position for s in self.specs if s.position))

    @property
    def needs_head(self) -> bool:
        return any(reads_head(s.family) for s in self.specs)

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
        self._check_positions(student.features, "student")
        self._check_positions(teacher.features, "teacher")
        teacher_features = teacher.features_for(student.features)
        return {name: pathway(student, teacher, teacher_features) for name, pathway in self.pathways.items()}

    def weighted(self, raw: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The weighting applied to raw pathway losses, keyed ``loss_<pathway>``."""
        return {f"loss_{name}": loss for name, loss in self.weighting(raw).items()}

    def _check_positions(self, feats: Mapping[str, torch.Tensor], side: str) -> None:
        missing = [p for p in self.positions if p not in feats]
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


@dataclass
class PositionSpec:
    """One MGD position of the common case: a name and the channel counts on each side."""

    name: str
    student_channels: int
    teacher_channels: int
    factor: float = 1.0

    def __post_init__(self):
        if not self.name or not self.name.isidentifier():
            raise ConfigError(f"position name {self.name!r} must be a non-empty identifier (it names buffers)")
        if self.student_channels <= 0 or self.teacher_channels <= 0:
            raise ConfigError(f"position {self.name!r}: channel counts must be positive")
        if not math.isfinite(self.factor):
            raise ConfigError(f"position {self.name!r}: factor must be finite; got {self.factor}")


def mgd_pathway_specs(positions: Sequence[Tuple[str, float]], reducer: str) -> List[PathwaySpec]:
    """The common case: one MGD pathway per position, named ``mgd_<position>``."""
    return [PathwaySpec(reducer, name, factor, name=f"mgd_{name}") for name, factor in positions]


class MatchingDistiller(PathwayDistiller):
    """MGD over several positions with one reducer: the common case, in one call.

    Losses are ``loss_mgd_<position>``; each is ``factor * partial L2 / batch size``.
    """

    def __init__(
        self,
        positions: Sequence[PositionSpec],
        reducer: str = "AMP",
        student_norm: str = "BN",
        num_groups: int = 32,
        allow_sharing: bool = False,
        weighting: Optional[LossWeighting] = None,
    ):
        if not positions:
            raise ConfigError("MatchingDistiller needs at least one position")
        names = [p.name for p in positions]
        if repeated(names):
            raise ConfigError(f"position names must be unique; got {names}")
        super().__init__(
            mgd_pathway_specs([(p.name, p.factor) for p in positions], reducer),
            {p.name: (p.student_channels, p.teacher_channels) for p in positions},
            student_norm=student_norm,
            num_groups=num_groups,
            allow_sharing=allow_sharing,
            weighting=weighting,
        )
