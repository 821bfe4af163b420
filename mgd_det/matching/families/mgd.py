"""MGD's families SM / RD / AMP / SP: teacher channels matched to student channels by an
assignment, reduced to the student's width (sparse matching, random drop, absolute max
pooling, simple max pooling) and compared with the partial L2 loss with BN margins.

No adaptation layer: the choice for distilling a pre-ReLU ResNet stage and for fine-tuning an
already-trained student. One :class:`~mgd_det.matching.matcher.ChannelMatcher` per
(position, group size) is shared by the matched pathways there (the distiller owns it).
"""
from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from .._checks import check_feature_pair
from ..assignment import group_size
from ..loss import partial_l2_loss
from ..matcher import ChannelMatcher, matcher_key
from ..options import OptionError, choice, flag, number
from ..pathways import Pathway, PathwaySpec
from ..reducers import REDUCERS, reduce_teacher
from .registry import BuildContext, register_family

STUDENT_NORMS = ("BN", "SyncBN", "GN", "none")

OPTIONS = (
    choice("student_norm", "BN", STUDENT_NORMS,
           "norm on the student's features inside the distillation branch only"),
    number("norm_groups", 32, "GroupNorm groups with student_norm GN (reduced to a divisor of the channels)",
           minimum=0, strict=True, integer=True),
    flag("allow_sharing", False,
         "let several student channels share one teacher channel when the student is wider (SM only)"),
)


def student_norm(kind: str, channels: int, num_groups: int) -> nn.Module:
    """The norm applied to student features inside the distillation branch only (``kind``
    and ``num_groups`` are checked options; GN takes min(num_groups, channels) groups)."""
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "GN":
        groups = min(num_groups, channels)
        if channels % groups:
            raise ConfigError(f"GroupNorm with {groups} groups does not divide {channels} channels; "
                              "change the norm_groups option")
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class MatchedFeaturePathway(Pathway):
    """MGD: reduce the matched teacher channels, partial L2 against the normalised student."""

    def __init__(self, spec: PathwaySpec, matcher: ChannelMatcher, norm: nn.Module):
        super().__init__(spec)
        self.norm = norm
        # Shared with other pathways at this position and group size; the distiller owns it
        # (registered there), so it is kept out of this module's parameters and state.
        object.__setattr__(self, "matcher", matcher)

    def forward(self, student, teacher, teacher_features):
        s, t = student.features[self.spec.position], teacher_features[self.spec.position]
        m = self.matcher
        check_feature_pair(s, t, m.student_channels, m.teacher_channels, f"pathway {self.name!r}")
        target, margin = reduce_teacher(t.detach(), m.assignment, m.margin, self.spec.family)
        return partial_l2_loss(self.norm(s), target, margin, m.margin_set) / s.shape[0]


def build_matched(spec: PathwaySpec, ctx: BuildContext, options) -> Pathway:
    cs, ct = ctx.feature_channels(spec)
    where = f"pathway {spec.name!r} (position {spec.position!r})"
    sparse, sharing = spec.family == "SM", options["allow_sharing"]
    if cs > ct and not (sparse and sharing):
        raise OptionError(spec.name, "allow_sharing", sharing, (
            f"must be True, with the SM family, for position {spec.position!r}, where the student is wider "
            f"than the teacher ({cs} vs {ct} channels): only SM can let student channels share a teacher "
            "channel"), from_default="allow_sharing" not in spec.options)
    key = matcher_key(spec.position, group_size(cs, ct, sparse, sharing))
    if key not in ctx.matchers:
        ctx.matchers[key] = ChannelMatcher(spec.position, cs, ct, sparse, sharing)
    try:
        norm = student_norm(options["student_norm"], cs, options["norm_groups"])
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return MatchedFeaturePathway(spec, ctx.matchers[key], norm)


# Registration order is the order error messages list the families in.
for _reducer in REDUCERS:
    register_family(_reducer, options=OPTIONS)(build_matched)
