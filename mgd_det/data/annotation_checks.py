"""Box sanity checks on Detectron2 dataset dicts, with one summary line per data set.

Detectron2 does not check boxes: an annotation without ``bbox`` fails only when its image is
drawn (minutes or hours in), a negative width is silently turned into a valid box by the
XYWH->XYXY conversion and the transforms, NaN and out-of-image boxes are dropped later
without a count. :func:`check_dataset_dicts` decides once, when a set is loaded:

- missing / malformed / non-finite ``bbox``, width or height <= 0: dropped;
- a box overshooting the image by at most :data:`CLIP_TOLERANCE_PX` pixels or
  :data:`CLIP_TOLERANCE_FRACTION` of the image side (rounding in exporters): clipped;
- a box overshooting by more, or entirely outside: dropped.

The images stay (an image left without boxes is handled by DATALOADER.FILTER_EMPTY_ANNOTATIONS
as usual). One line summarises counts, with example ids of what was dropped or fixed.
"""
import logging
import math
from collections import OrderedDict
from typing import Dict, List, Tuple

logger = logging.getLogger(__name__)

CLIP_TOLERANCE_PX = 1.0
CLIP_TOLERANCE_FRACTION = 0.01
EXAMPLES = 3  # example ids named per kind of problem

# Problem kinds, in the order they are reported.
NO_BOX, BAD_BOX, NON_FINITE, NON_POSITIVE, OUTSIDE, CLIPPED = (
    "without bbox", "malformed bbox", "non-finite bbox", "width or height <= 0",
    "outside the image beyond the tolerance", "clipped to the image",
)


def _ann_ref(record: Dict, index: int, ann: Dict) -> str:
    ann_id = ann.get("id")
    return f"ann {ann_id}" if ann_id is not None else f"image {record.get('image_id')} #{index}"


def _box_xyxy(ann: Dict) -> Tuple[float, float, float, float]:
    from detectron2.structures import BoxMode

    x0, y0, a, b = (float(v) for v in ann["bbox"])
    if ann.get("bbox_mode", BoxMode.XYWH_ABS) == BoxMode.XYXY_ABS:
        return x0, y0, a, b
    return x0, y0, x0 + a, y0 + b


def _check_box(ann: Dict, width: float, height: float):
    """(problem or None, fixed bbox or None)."""
    from detectron2.structures import BoxMode

    if "bbox" not in ann or ann["bbox"] is None or (hasattr(ann["bbox"], "__len__") and len(ann["bbox"]) == 0):
        return NO_BOX, None
    mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode not in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
        return None, None  # relative or rotated boxes: not ours to judge
    try:
        if len(ann["bbox"]) != 4:
            return BAD_BOX, None
        x0, y0, x1, y1 = _box_xyxy(ann)
    except (TypeError, ValueError):
        return BAD_BOX, None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return NON_FINITE, None
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return NON_POSITIVE, None
    if width is None or height is None:
        return None, None
    tol_x = max(CLIP_TOLERANCE_PX, CLIP_TOLERANCE_FRACTION * width)
    tol_y = max(CLIP_TOLERANCE_PX, CLIP_TOLERANCE_FRACTION * height)
    over_x = max(-x0, x1 - width, 0.0)
    over_y = max(-y0, y1 - height, 0.0)
    if over_x == 0 and over_y == 0:
        return None, None
    if over_x > tol_x or over_y > tol_y:
        return OUTSIDE, None
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        return OUTSIDE, None
    fixed = [cx0, cy0, cx1, cy1] if mode == BoxMode.XYXY_ABS else [cx0, cy0, cx1 - cx0, cy1 - cy0]
    return CLIPPED, fixed


def check_dataset_dicts(dicts: List[Dict], name: str, log: bool = True) -> Tuple[List[Dict], Dict[str, List[str]]]:
    """Drop or clip bad boxes of ``dicts`` (in place) and return ``(dicts, problems)``.

    ``problems`` maps each kind of problem to the references of the annotations concerned
    (``"ann <id>"``, or ``"image <id> #<index>"`` when annotations carry no id).
    """
    problems: Dict[str, List[str]] = OrderedDict()
    num_boxes = 0
    for record in dicts:
        anns = record.get("annotations")
        if not anns:
            continue
        kept = []
        for index, ann in enumerate(anns):
            num_boxes += 1
            problem, fixed = _check_box(ann, record.get("width"), record.get("height"))
            if problem:
                problems.setdefault(problem, []).append(_ann_ref(record, index, ann))
            if fixed is not None:
                ann["bbox"] = fixed
            if problem is None or problem == CLIPPED:
                kept.append(ann)
        record["annotations"] = kept
    if log:
        logger.log(logging.WARNING if problems else logging.INFO, summary_line(name, len(dicts), num_boxes, problems))
    return dicts, problems


def summary_line(name: str, num_images: int, num_boxes: int, problems: Dict[str, List[str]]) -> str:
    if not problems:
        return f"Data set '{name}': {num_images} images, {num_boxes} boxes checked, all valid."
    dropped = sum(len(v) for k, v in problems.items() if k != CLIPPED)
    parts = []
    for kind, refs in problems.items():
        examples = ", ".join(refs[:EXAMPLES]) + (", ..." if len(refs) > EXAMPLES else "")
        parts.append(f"{len(refs)} {kind} (e.g. {examples})")
    return (f"Data set '{name}': {num_images} images, {num_boxes} boxes checked: dropped {dropped}, "
            f"clipped {len(problems.get(CLIPPED, []))}: " + "; ".join(parts)
            + f". Fix the annotation file to silence this (tolerance for clipping: "
            f"{CLIP_TOLERANCE_PX:g} px or {CLIP_TOLERANCE_FRACTION:.0%} of the image side).")
