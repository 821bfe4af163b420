"""What one network hands to the distillation pathways for one batch.

The training step reads: teacher pass -> :class:`TeacherOutput`, student pass ->
:class:`NetOutputs`, then every pathway compares the two. Features are keyed by position
name only; everything else (head outputs, the padding facts the crop needs) has its own
field instead of travelling as special keys inside the feature dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch


@dataclass
class NetOutputs:
    """Tapped features of one network, plus its dense head outputs when a pathway reads them.

    Attributes:
        features: ``{position: (N, C, H, W)}``, e.g. pre-ReLU ``res3`` or FPN ``p4``.
        logits: per FPN level, (N, A*K, H, W) classification logits of a dense head.
        box_deltas: per FPN level, (N, A*4, H, W) box regression outputs of a dense head.
    """

    features: Dict[str, torch.Tensor] = field(default_factory=dict)
    logits: Optional[List[torch.Tensor]] = None
    box_deltas: Optional[List[torch.Tensor]] = None

    def require_head(self, side: str, what: str) -> None:
        """Raise ValueError when a head pathway finds no head outputs on this side."""
        if self.logits is None or self.box_deltas is None:
            raise ValueError(
                f"{what} needs the {side}'s dense head outputs (logits and box deltas), "
                "but the forward pass did not record them"
            )


@dataclass
class Canvas:
    """Padded input sizes (H, W) of teacher and student for one batch.

    The teacher may pad to a coarser size divisibility than the student; a teacher map that is
    larger only by that padding is cropped to the student's map (see :func:`crop_to_student`).
    """

    teacher: Tuple[int, int]
    student: Tuple[int, int]


@dataclass
class TeacherOutput(NetOutputs):
    """:class:`NetOutputs` of the (frozen) teacher, with the canvas facts of its input."""

    canvas: Optional[Canvas] = None

    def features_for(self, student_features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The teacher features, each cropped to the student's map where padding explains it;
        a position the student is not tapped at (a connection across positions) to the
        student's canvas at that map's stride."""
        if self.canvas is None:
            return dict(self.features)
        return {
            name: crop_to_student(feat, student_features[name].shape[-2:], self.canvas)
            if name in student_features
            else crop_to_canvas(feat, self.canvas)
            for name, feat in self.features.items()
        }


def crop_to_canvas(teacher_feat: torch.Tensor, canvas: Canvas) -> torch.Tensor:
    """The part of a teacher map that covers the student's canvas: at the map's stride ``s``
    (teacher canvas / map size) ``ceil(student canvas / s)`` rows and columns."""
    hw = tuple(teacher_feat.shape[-2:])
    keep = tuple(-(-sc * m // tc) for sc, m, tc in zip(canvas.student, hw, canvas.teacher))
    return teacher_feat if keep == hw else teacher_feat[..., : keep[0], : keep[1]]


def crop_to_student(teacher_feat: torch.Tensor, student_hw, canvas: Canvas) -> torch.Tensor:
    """Drop the teacher map's extra bottom/right padding when a coarser canvas explains it.

    At a position of stride ``s`` (the student's) the padded teacher map is
    ``ceil(teacher canvas / s)``; only that difference is cropped. Anything else (e.g. a
    dilated teacher stage) is returned unchanged for the pathway to report as a mismatch.
    """
    student_hw = tuple(student_hw)
    if tuple(teacher_feat.shape[-2:]) == student_hw:
        return teacher_feat
    expected = tuple(
        -(-tc * sf // sc) for tc, sf, sc in zip(canvas.teacher, student_hw, canvas.student)
    )
    if tuple(teacher_feat.shape[-2:]) == expected:
        return teacher_feat[..., : student_hw[0], : student_hw[1]]
    return teacher_feat
