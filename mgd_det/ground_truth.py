"""Which images carry ground truth: one marker, from the data set dicts to the model.

An image is *unlabeled* when it has no ground truth at all. Its data set dict has no
``"annotations"`` key (an annotated image without objects has ``"annotations": []``), and
the mapped input the model receives has no ``"instances"`` (Detectron2's mapper turns the
first into the second). Loaders, mappers, DistPro's held-out split and the student's
detection losses all ask :func:`is_unlabeled`, at whichever stage they hold the image.
Detectron2-free.
"""
from typing import Mapping

ANNOTATIONS_KEY = "annotations"  # ground truth of a Detectron2 data set dict
INSTANCES_KEY = "instances"  # ground truth of a mapped input (the model's batched_inputs)


def is_unlabeled(record: Mapping) -> bool:
    """True for an image without ground truth: a data set dict or a mapped input."""
    return ANNOTATIONS_KEY not in record and INSTANCES_KEY not in record
