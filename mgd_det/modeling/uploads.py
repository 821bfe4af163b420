"""Detectron2 training inputs to the model's device without blocking the host.

A blocking host-to-device copy (``tensor.to(device)``, what Detectron2's models and
``Instances.to`` do) synchronises the host with the GPU stream: issued after the forward has been
queued, the first one waits for the whole forward. ``non_blocking=True`` from pageable memory
stages the data and returns at once (the source may be freed right away), so the host keeps
queueing work. On the CPU both are the same no-op.
"""
from typing import List

import torch
from detectron2.structures import Boxes, Instances

__all__ = ["upload_inputs", "upload_instances"]


def upload_instances(instances: Instances, device: torch.device) -> Instances:
    """``instances.to(device)`` with non-blocking copies of its tensors and boxes."""
    fields = {}
    for name, value in instances.get_fields().items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
        elif isinstance(value, Boxes):  # and RotatedBoxes: same constructor
            value = type(value)(value.tensor.to(device, non_blocking=True))
        elif hasattr(value, "to"):  # masks, keypoints: Detectron2's own copy
            value = value.to(device)
        fields[name] = value
    return Instances(instances.image_size, **fields)


def upload_inputs(batched_inputs: List[dict], device: torch.device) -> List[dict]:
    """New input dicts with ``image`` and ``instances`` on ``device``: one copy each, shared by
    every network that reads them (inputs already there are passed through)."""
    uploaded = []
    for x in batched_inputs:
        x = dict(x)
        if x["image"].device != device:
            x["image"] = x["image"].to(device, non_blocking=True)
        if "instances" in x:
            x["instances"] = upload_instances(x["instances"], device)
        uploaded.append(x)
    return uploaded
