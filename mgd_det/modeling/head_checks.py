"""Whether the teacher's and the student's heads fit the head pathways of a config: checked
when the model is built, before any training, with one line naming MGD.PATHWAYS.

- dense (KD, BOX): RetinaNet-style heads on both sides, the same logits per location;
- rpn (RPN_KD, RPN_BOX): an RPN on both sides with the same anchors (sizes, aspect ratios,
  strides) and box transform;
- regions (ROI_KD, ROI_BOX): standard ROI heads on both sides with the same classes, box
  transform and class-agnostic setting; the student's proposals come from its RPN;
- masks (MASK_KD): mask heads on both sides with the same classes and resolution.

A mixed pair (an R-CNN teacher with a RetinaNet student, or the reverse) has no common head to
distil: only the feature pathways apply to it.
"""
from typing import AbstractSet

import torch

from mgd_det.errors import ConfigError
from mgd_det.matching.families import FAMILIES
from mgd_det.matching.outputs import DENSE, MASKS, REGIONS, RPN

KEY = "MGD.PATHWAYS"


def _families(kind: str) -> str:
    return "/".join(name for name, family in FAMILIES.items() if family.reads == kind)


def _refuse(kind: str, problem: str) -> None:
    raise ConfigError(f"{KEY}: the {_families(kind)} pathways {problem}; remove them from {KEY} "
                      "(the feature pathways work for any pair)", key=KEY)


def _kind_of(net) -> str:
    if hasattr(getattr(getattr(net, "head", None), "cls_score", None), "out_channels"):
        return "dense (RetinaNet)"
    if hasattr(net, "roi_heads") or hasattr(net, "proposal_generator"):
        return "two-stage (R-CNN)"
    return type(net).__name__


def _rpn(net):
    rpn = getattr(net, "proposal_generator", None)
    return rpn if hasattr(rpn, "rpn_head") and hasattr(rpn, "anchor_generator") else None


def _box_predictor(net):
    return getattr(getattr(net, "roi_heads", None), "box_predictor", None)


def _mask_head(net):
    heads = getattr(net, "roi_heads", None)
    return heads.mask_head if getattr(heads, "mask_on", False) and getattr(heads, "mask_pooler", None) else None


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _refuse_differences(kind: str, compares: str, pairs) -> None:
    """Refuse when any ``(what, student value, teacher value)`` of ``pairs`` differs."""
    problems = [f"{what} (student {s}, teacher {t})" for what, s, t in pairs if not _same(s, t)]
    if problems:
        _refuse(kind, f"compare the two {compares}, but their " + "; ".join(problems) + " differ")


def check_dense(student, teacher) -> None:
    heads = [getattr(m, "head", None) for m in (student, teacher)]
    if not all(h is not None and hasattr(h, "cls_score") for h in heads):
        _refuse(DENSE, f"need dense (RetinaNet) heads on both teacher and student; the student is "
                       f"{_kind_of(student)}, the teacher {_kind_of(teacher)} (for two-stage pairs use RPN_KD, "
                       f"RPN_BOX, ROI_KD, ROI_BOX, MASK_KD)")
    shapes = [h.cls_score.out_channels for h in heads]
    if shapes[0] != shapes[1]:
        _refuse(DENSE, f"need the same classes and anchors per location: the student's head predicts {shapes[0]} "
                       f"logits per location, the teacher's {shapes[1]}")


def _need_rcnn(kind: str, student, teacher) -> None:
    if _rpn(student) is None or _rpn(teacher) is None or _box_predictor(student) is None \
            or _box_predictor(teacher) is None:
        _refuse(kind, f"need two-stage (Faster/Mask R-CNN) heads with an RPN on both teacher and student; the "
                      f"student is {_kind_of(student)}, the teacher {_kind_of(teacher)} (for RetinaNet pairs use KD, BOX)")


def check_rpn(student, teacher) -> None:
    _need_rcnn(RPN, student, teacher)
    s, t = _rpn(student), _rpn(teacher)
    _refuse_differences(RPN, "RPNs anchor by anchor", [
        ("anchors per location", s.rpn_head.objectness_logits.out_channels,
         t.rpn_head.objectness_logits.out_channels),
        ("RPN levels", len(s.in_features), len(t.in_features)),
        ("anchor strides", list(s.anchor_generator.strides), list(t.anchor_generator.strides)),
        ("anchor shapes (ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS)",
         [a.tolist() for a in s.anchor_generator.cell_anchors],
         [a.tolist() for a in t.anchor_generator.cell_anchors]),
        ("RPN.BBOX_REG_WEIGHTS", tuple(s.box2box_transform.weights), tuple(t.box2box_transform.weights)),
    ])


def check_regions(student, teacher) -> None:
    _need_rcnn(REGIONS, student, teacher)
    s, t = _box_predictor(student), _box_predictor(teacher)
    _refuse_differences(REGIONS, "box heads ROI by ROI", [
        ("classes + background (ROI_HEADS.NUM_CLASSES + 1)", s.cls_score.out_features, t.cls_score.out_features),
        ("box deltas per ROI (ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)", s.bbox_pred.out_features,
         t.bbox_pred.out_features),
        ("ROI_BOX_HEAD.BBOX_REG_WEIGHTS", tuple(s.box2box_transform.weights), tuple(t.box2box_transform.weights)),
    ])


def check_masks(student, teacher) -> None:
    _need_rcnn(MASKS, student, teacher)
    heads = [_mask_head(student), _mask_head(teacher)]
    if any(h is None for h in heads):
        _refuse(MASKS, f"need mask heads on both sides (MODEL.MASK_ON: student {heads[0] is not None}, teacher "
                       f"{heads[1] is not None})")
    sizes = [m.roi_heads.mask_pooler.output_size for m in (student, teacher)]
    _refuse_differences(MASKS, "mask heads pixel by pixel", [
        ("mask classes", heads[0].predictor.out_channels, heads[1].predictor.out_channels),
        ("mask pooler resolutions (ROI_MASK_HEAD.POOLER_RESOLUTION)", tuple(sizes[0]), tuple(sizes[1])),
    ])


CHECKS = {DENSE: check_dense, RPN: check_rpn, REGIONS: check_regions, MASKS: check_masks}


def check_heads(student, teacher, reads: AbstractSet[str]) -> None:
    """Raise ConfigError (one line, key MGD.PATHWAYS) unless both nets have the heads that the
    kinds in ``reads`` distil, compatible with each other."""
    for kind, check in CHECKS.items():
        if kind in reads:
            check(student, teacher)
