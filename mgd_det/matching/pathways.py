"""Distillation pathways: named (student tap, teacher tap, transform, loss) units.

A pathway returns its *unweighted* loss, normalised per image; how much it counts is the
loss weighting's business (:mod:`mgd_det.matching.weighting`), which sees every pathway.

Families (what each is for; the registry of :mod:`.families` maps each name to the builder
of its pathway, so a new family is one ``register_family``):

- ``SM`` / ``RD`` / ``AMP`` / ``SP`` -- MGD: teacher channels matched to student channels by
  an assignment, reduced to the student's width (sparse matching, random drop, absolute max
  pooling, simple max pooling) and compared with the partial L2 loss with BN margins. No
  adaptation layer: the choice for distilling a pre-ReLU ResNet stage and for fine-tuning an
  already-trained student.
- ``PKD`` -- per-channel standardised feature L2 (Pearson-correlation distillation): each
  channel map is standardised per image on both sides and compared by mean squared error
  (= 2·(1 − Pearson correlation)). Needs no matching; a 1×1 connector maps the student to the
  teacher's width only where the widths differ. Suits FPN outputs, whose scale is arbitrary.
- ``KD`` -- Hinton knowledge distillation on the dense head's classification logits
  (sigmoid per anchor and class, as RetinaNet predicts them), focal-weighted per element so
  the background the student already matches does not swamp the foreground.
- ``BOX`` -- dense distillation of the head's box regression: smooth-L1 between student and
  teacher box deltas, weighted per anchor by the teacher's confidence. With ``KD`` it lets a
  student learn the teacher's outputs without any annotation.

Normalisation: every loss is a mean or a sum per image divided by the number of images of the
local batch. Data-parallel training averages gradients over processes that hold equal
batches, so the gradient is that of the per-image loss over the images of *all* processes:
the same factors work for any number of processes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_feature_pair
from .kd import FOCAL_GAMMA, FOREGROUND_TEMPERATURE, check_focal_gamma, dense_kd_loss, foreground_weight
from .loss import partial_l2_loss
from .matcher import ChannelMatcher
from .outputs import NetOutputs, TeacherOutput
from .families import family_names, reads_head
from .reducers import reduce_teacher
from ..errors import ConfigError

STUDENT_NORMS = ("BN", "SyncBN", "GN", "none")


@dataclass(frozen=True)
class PathwaySpec:
    """What a pathway distils: family, position (None for head families), reference factor.

    ``name`` defaults to ``<family>_<position>`` in lower case (``kd`` / ``box`` for head
    families); it names the loss (``loss_<name>``), the weight and the log entries.
    """

    family: str
    position: Optional[str] = None
    factor: float = 1.0
    name: str = ""

    def __post_init__(self):
        if self.family not in family_names():
            raise ConfigError(
                f"unknown pathway family {self.family!r}; valid families are {', '.join(family_names())}"
            )
        if reads_head(self.family):
            if self.position:
                raise ConfigError(f"pathway family {self.family!r} reads the head and takes no position")
        elif not self.position:
            raise ConfigError(f"pathway family {self.family!r} needs a position (e.g. res3 or p4)")
        if not (self.factor >= 0 and self.factor < float("inf")):
            raise ConfigError(f"pathway {self.family}:{self.position}: factor must be finite and >= 0; got {self.factor}")
        if not self.name:
            default = self.family.lower() + (f"_{self.position}" if self.position else "")
            object.__setattr__(self, "name", default)
        if not self.name.isidentifier():
            raise ConfigError(f"pathway name {self.name!r} must be an identifier (it names losses and weights)")


_SPEC_PATTERN = re.compile(r"^\s*(?:(?P<name>\w+)\s*=\s*)?(?P<body>[^=]+?)\s*$")


def parse_pathway(text: str) -> PathwaySpec:
    """``"[name=]FAMILY[:POSITION][:FACTOR]"`` -> PathwaySpec, e.g. ``"AMP:res4:2e-7"``,
    ``"sm4=SM:res4:1e-7"``, ``"PKD:p3:1.0"``, ``"KD:0.5"``, ``"BOX"``."""
    match = _SPEC_PATTERN.match(text or "")
    if not match:
        raise ConfigError(f"cannot read pathway {text!r}; write FAMILY[:POSITION][:FACTOR], e.g. 'AMP:res4:2e-7'")
    parts = [p.strip() for p in match.group("body").split(":")]
    family, rest = parts[0].upper(), parts[1:]
    position, factor = None, 1.0
    if not reads_head(family) and rest:
        position, rest = rest[0], rest[1:]
    if len(rest) > 1:
        raise ConfigError(f"pathway {text!r} has too many ':' fields; write FAMILY[:POSITION][:FACTOR]")
    if rest:
        try:
            factor = float(rest[0])
        except ValueError:
            raise ConfigError(f"pathway {text!r}: factor {rest[0]!r} is not a number") from None
    return PathwaySpec(family, position, factor, match.group("name") or "")


def student_norm(kind: str, channels: int, num_groups: int, where: str) -> nn.Module:
    """The norm applied to student features inside the distillation branch only."""
    if kind not in STUDENT_NORMS:
        raise ConfigError(f"unknown student_norm {kind!r}; valid values are {', '.join(STUDENT_NORMS)}")
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "GN":
        if num_groups <= 0:
            raise ConfigError(f"{where}: the number of GroupNorm groups must be positive; got {num_groups}")
        groups = min(num_groups, channels)
        if channels % groups:
            raise ConfigError(f"{where}: GroupNorm with {groups} groups does not divide {channels} channels; change num_groups")
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class Pathway(nn.Module):
    """Base: ``forward(student, teacher, teacher_features)`` -> unweighted per-image loss.

    ``teacher_features`` are the teacher's features already cropped to the student's maps.
    """

    def __init__(self, spec: PathwaySpec):
        super().__init__()
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def forward(self, student: NetOutputs, teacher: TeacherOutput, teacher_features: Dict[str, torch.Tensor]):
        raise NotImplementedError


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


def _standardise(feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel map of each image to zero mean and unit variance (float32)."""
    flat = feat.float().flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    var = flat.var(dim=2, unbiased=False, keepdim=True)
    return ((flat - mean) * torch.rsqrt(var + eps)).view_as(feat)


class StandardizedFeaturePathway(Pathway):
    """PKD-style: mean squared error of per-channel standardised maps (2·(1 − Pearson r))."""

    def __init__(self, spec: PathwaySpec, student_channels: int, teacher_channels: int):
        super().__init__(spec)
        self.teacher_channels = int(teacher_channels)
        self.student_channels = int(student_channels)
        self.connector = (
            nn.Identity() if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        )

    def forward(self, student, teacher, teacher_features):
        s, t = student.features[self.spec.position], teacher_features[self.spec.position]
        check_feature_pair(s, t, self.student_channels, self.teacher_channels, f"pathway {self.name!r}")
        diff = _standardise(self.connector(s)) - _standardise(t.detach())
        return diff.pow(2).mean(dim=(1, 2, 3)).sum() / s.shape[0]


class OutputKDPathway(Pathway):
    """Hinton KD on dense sigmoid logits, focal-weighted per element by |p_s - p_t|^focal_gamma
    and normalised by the teacher's foreground mass (:func:`~.kd.dense_kd_loss`): a foreground
    anchor's gradient is ~1/(foreground anchors), not ~1/(anchors x classes), the background
    elements the student already matches barely count, and the loss is 0 when the student
    matches the teacher."""

    def __init__(self, spec: PathwaySpec, temperature: float, fg_temperature: float = FOREGROUND_TEMPERATURE,
                 focal_gamma: float = FOCAL_GAMMA):
        super().__init__(spec)
        if not temperature > 0 or not fg_temperature > 0:
            raise ConfigError(f"KD temperatures must be positive; got {temperature} and {fg_temperature} (foreground)")
        try:
            check_focal_gamma(focal_gamma)
        except ValueError as err:
            raise ConfigError(f"KD {err}") from err
        self.temperature = float(temperature)
        self.fg_temperature = float(fg_temperature)
        self.focal_gamma = float(focal_gamma)

    def forward(self, student, teacher, teacher_features):
        student.require_head("student", f"pathway {self.name!r}")
        teacher.require_head("teacher", f"pathway {self.name!r}")
        return dense_kd_loss(student.logits, teacher.logits, self.temperature, self.fg_temperature, self.focal_gamma)


class OutputBoxPathway(Pathway):
    """Dense box distillation: smooth-L1 of box deltas, weighted by the teacher's foreground.

    Per anchor the weight is :func:`~.kd.foreground_weight` of the teacher's largest class
    logit (sharpened by ``fg_temperature``; at 1 it is the largest class probability, which
    left most of the weight on the many anchors below 0.5), so background anchors, where
    the teacher's box output means nothing, barely count; the loss is the weighted sum over
    anchors divided by the teacher's foreground mass (a weighted mean; at least 1).
    """

    def __init__(self, spec: PathwaySpec, num_classes: int, beta: float = 0.1,
                 fg_temperature: float = FOREGROUND_TEMPERATURE):
        super().__init__(spec)
        if not fg_temperature > 0:
            raise ConfigError(f"BOX foreground temperature must be positive; got {fg_temperature}")
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.fg_temperature = float(fg_temperature)

    def _per_anchor(self, logits: torch.Tensor, deltas: torch.Tensor):
        n, _, h, w = logits.shape
        top = logits.detach().float().view(n, -1, self.num_classes, h, w).amax(dim=2)
        return foreground_weight(top, self.fg_temperature), deltas.view(n, -1, 4, h, w)

    def forward(self, student, teacher, teacher_features):
        student.require_head("student", f"pathway {self.name!r}")
        teacher.require_head("teacher", f"pathway {self.name!r}")
        total, weight_sum = 0.0, 0.0
        for s_deltas, t_logits, t_deltas in zip(student.box_deltas, teacher.logits, teacher.box_deltas):
            weight, t_boxes = self._per_anchor(t_logits, t_deltas.detach())
            s_boxes = s_deltas.view_as(t_boxes)
            err = F.smooth_l1_loss(s_boxes.float(), t_boxes.float(), beta=self.beta, reduction="none").sum(dim=2)
            total = total + (err * weight).sum()
            weight_sum = weight_sum + weight.sum()
        return total / weight_sum.clamp(min=1.0)
