"""What a distillation pathway is: its spec (family, position, factor, name, options) and the
:class:`Pathway` base its family builds.

A pathway returns its *unweighted* loss, normalised per image; how much it counts is the
loss weighting's business (:mod:`mgd_det.matching.weighting`), which sees every pathway.
The families -- one module each, with their options -- are in :mod:`mgd_det.matching.families`:

- ``SM`` / ``RD`` / ``AMP`` / ``SP`` (``families/mgd.py``) -- MGD: teacher channels matched to
  student channels by an assignment, reduced to the student's width and compared with the
  partial L2 loss with BN margins.
- ``PKD`` (``families/pkd.py``) -- per-channel standardised feature L2 (Pearson correlation).
- ``KD`` (``families/kd.py``) -- focal Hinton KD on the dense head's sigmoid logits.
- ``BOX`` (``families/box.py``) -- the head's box deltas, weighted by the teacher's foreground.

Normalisation: every loss is a mean or a sum per image divided by the number of images of the
local batch. Data-parallel training averages gradients over processes that hold equal
batches, so the gradient is that of the per-image loss over the images of *all* processes:
the same factors work for any number of processes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import NetOutputs, TeacherOutput
from ..errors import ConfigError


@dataclass(frozen=True)
class PathwaySpec:
    """What a pathway distils: family, the student's position (None for head families), the
    teacher's position when it differs (a connection across positions, e.g. student ``res4``
    from teacher ``res5``), reference factor, and the options of its family set by this entry
    (the rest take their defaults).

    ``name`` defaults to ``<family>_<position>`` in lower case, ``<family>_<student
    position>_<teacher position>`` across positions (``kd`` / ``box`` for head families); it
    names the loss (``loss_<name>``), the weight and the log entries. Whether the family exists
    and takes these positions is checked when the pathway is read or built
    (:mod:`mgd_det.matching.families`).
    """

    family: str
    position: Optional[str] = None
    factor: float = 1.0
    name: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    teacher_position: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.family, str) or not self.family:
            raise ConfigError(f"a pathway needs a family name; got {self.family!r}")
        if not (self.factor >= 0 and self.factor < float("inf")):
            raise ConfigError(f"pathway {self.family}:{self.position}: factor must be finite and >= 0; got {self.factor}")
        if self.teacher_position == self.position:
            object.__setattr__(self, "teacher_position", None)
        if not self.name:
            default = self.family.lower() + "".join(f"_{p}" for p in (self.position, self.teacher_position) if p)
            object.__setattr__(self, "name", default)
        if not self.name.isidentifier():
            raise ConfigError(f"pathway name {self.name!r} must be an identifier (it names losses and weights)")
        object.__setattr__(self, "options", dict(self.options))

    @property
    def source(self) -> Optional[str]:
        """The teacher's position this pathway reads (the student's unless it names another)."""
        return self.teacher_position or self.position

    @property
    def crosses(self) -> bool:
        """Whether student and teacher positions differ."""
        return self.teacher_position is not None

    def with_options(self, options: Mapping[str, Any]) -> "PathwaySpec":
        """This spec with ``options`` set on top of its own."""
        return dataclasses.replace(self, options={**self.options, **options})


def align_to_student(teacher_map: torch.Tensor, student_hw) -> torch.Tensor:
    """The teacher's map resized to the student's spatial size (bilinear; antialiased when it
    shrinks), for transforms that compare maps of different strides; unchanged when equal."""
    student_hw = tuple(int(x) for x in student_hw)
    if tuple(teacher_map.shape[-2:]) == student_hw:
        return teacher_map
    shrinks = any(t > s for t, s in zip(teacher_map.shape[-2:], student_hw))
    return F.interpolate(teacher_map.float(), size=student_hw, mode="bilinear", align_corners=False,
                         antialias=shrinks)


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


class HeadOutputPathway(Pathway):
    """Base of a pathway comparing one kind of head output of the two networks (``reads``, a
    :data:`~mgd_det.matching.outputs.HEAD_OUTPUTS` kind): checks that both sides recorded
    it, then returns :meth:`loss` with the family's options (as given to the constructor)."""

    reads: str = ""

    def __init__(self, spec: PathwaySpec, **options):
        super().__init__(spec)
        self.options = dict(options)

    def loss(self, student: NetOutputs, teacher: TeacherOutput, **options) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: NetOutputs, teacher: TeacherOutput, teacher_features: Dict[str, torch.Tensor]):
        student.require(self.reads, "student", f"pathway {self.name!r}")
        teacher.require(self.reads, "teacher", f"pathway {self.name!r}")
        return self.loss(student, teacher, **self.options)
