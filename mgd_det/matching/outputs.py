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

# What a pathway family reads of the two networks (``PathwayFamily.reads``): tapped features
# at a position, or one kind of head output (no position), each filled by the model only when
# a pathway reads it.
FEATURES = "features"
DENSE = "dense"  # a dense head's (RetinaNet) per-anchor class logits and box deltas
RPN = "rpn"  # an R-CNN's region proposal network: per-anchor objectness logits and deltas
REGIONS = "regions"  # an R-CNN's box head on the distillation ROIs
MASKS = "masks"  # an R-CNN's mask head on the ROIs the teacher calls foreground
HEAD_OUTPUTS = (DENSE, RPN, REGIONS, MASKS)


@dataclass
class RegionOutputs:
    """An R-CNN's box (and mask) head outputs on the batch's distillation ROIs.

    Both networks see the *same* boxes: the student's proposals, each network pooling them from
    its own features (:mod:`mgd_det.modeling.region_pass`).

    Attributes:
        class_logits: (R, K+1) box-head class logits (the last column is background).
        box_deltas: (R, 4K) class-specific or (R, 4) class-agnostic box regression deltas.
        mask_logits: (M, K or 1, S, S) mask logits on the mask ROIs (:attr:`mask_rois`).
        mask_rois: (R,) bool, the ROIs the teacher calls foreground (its largest class is not
            background): where the masks are compared. Decided by the teacher; the student's
            outputs hold the teacher's choice.
    """

    class_logits: Optional[torch.Tensor]
    box_deltas: Optional[torch.Tensor]
    mask_logits: Optional[torch.Tensor] = None
    mask_rois: Optional[torch.Tensor] = None


@dataclass
class NetOutputs:
    """Tapped features of one network, plus the head outputs a pathway reads.

    Attributes:
        features: ``{position: (N, C, H, W)}``, e.g. pre-ReLU ``res3`` or FPN ``p4``.
        logits: per FPN level, (N, A*K, H, W) classification logits of a dense head.
        box_deltas: per FPN level, (N, A*4, H, W) box regression outputs of a dense head.
        rpn_logits: per level, (N, A, H, W) objectness logits of an R-CNN's RPN.
        rpn_deltas: per level, (N, A*4, H, W) anchor deltas of an R-CNN's RPN.
        regions: the box and mask heads on the distillation ROIs (:class:`RegionOutputs`).
        head_inputs: the backbone's outputs by name (FPN levels), kept when the ROI heads run
            after the pass (on the student's proposals).
        proposals: per image, (P, 4) proposal boxes of the student's RPN, most confident first
            (detached; the student's only).
    """

    features: Dict[str, torch.Tensor] = field(default_factory=dict)
    logits: Optional[List[torch.Tensor]] = None
    box_deltas: Optional[List[torch.Tensor]] = None
    rpn_logits: Optional[List[torch.Tensor]] = None
    rpn_deltas: Optional[List[torch.Tensor]] = None
    regions: Optional[RegionOutputs] = None
    head_inputs: Optional[Dict[str, torch.Tensor]] = None
    proposals: Optional[List[torch.Tensor]] = None

    def require(self, kind: str, side: str, what: str) -> None:
        """Raise ValueError when a pathway reading ``kind`` (:data:`HEAD_OUTPUTS`) finds those
        outputs missing on this side."""
        present = {
            DENSE: self.logits is not None and self.box_deltas is not None,
            RPN: self.rpn_logits is not None and self.rpn_deltas is not None,
            REGIONS: self.regions is not None and self.regions.class_logits is not None,
            MASKS: self.regions is not None and self.regions.mask_logits is not None,
        }[kind]
        if not present:
            raise ValueError(f"{what} needs the {side}'s {kind} head outputs, but the forward pass did not record them")


def dense_outputs(net: NetOutputs, kind: str) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(logits, box deltas) per level of a dense head: :data:`DENSE` (a RetinaNet head, K
    logits per anchor) or :data:`RPN` (an R-CNN's proposal network, one objectness logit)."""
    if kind == DENSE:
        return net.logits, net.box_deltas
    if kind == RPN:
        return net.rpn_logits, net.rpn_deltas
    raise ValueError(f"{kind!r} is not a dense head output (expected {DENSE!r} or {RPN!r})")


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
