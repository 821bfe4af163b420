"""The student's training pass: detection losses of the labeled images, distillation taps
of all images.

A batch may mix labeled and unlabeled images (distillation from unlabeled collections).
The backbone (and dense head) runs once over the whole batch; the detection losses are
computed from the labeled images' share of that pass, so a mixed batch keeps them. Follows
Detectron2's own ``forward`` of dense detectors (RetinaNet, FCOS) and of GeneralizedRCNN.
"""
from typing import Dict, List, Tuple

import torch
from detectron2.structures import ImageList

from mgd_det.matching.outputs import NetOutputs
from mgd_det.errors import ConfigError
from mgd_det.ground_truth import is_unlabeled


def _subset_images(images: ImageList, index: List[int]) -> ImageList:
    return ImageList(images.tensor[index], [images.image_sizes[i] for i in index])


def run_student(student, batched_inputs, taps, need_head: bool) -> Tuple[Dict[str, torch.Tensor], NetOutputs]:
    """(detection losses of the labeled images, tapped student outputs of all images)."""
    labeled = [i for i, x in enumerate(batched_inputs) if not is_unlabeled(x)]
    everything = len(labeled) == len(batched_inputs)
    images = student.preprocess_image(batched_inputs)
    with taps.capture() as feats:
        features = student.backbone(images.tensor)
    outputs = NetOutputs(features=feats)
    gt = [batched_inputs[i]["instances"].to(student.device) for i in labeled]
    if hasattr(student, "head_in_features"):  # dense detector
        head_features = [features[f] for f in student.head_in_features]
        if not (need_head or labeled):
            return {}, outputs
        predictions = student.head(head_features)
        outputs.logits, outputs.box_deltas = predictions[0], predictions[1]
        if not labeled:
            return {}, outputs
        if not everything:
            predictions = [[level[labeled] for level in kind] for kind in predictions]
        return student.forward_training(images, head_features, predictions, gt), outputs
    if need_head:
        raise ConfigError(
            "distillation pathways KD and BOX need a dense (RetinaNet-style) student head; "
            f"{type(student).__name__} has none. Remove them from MGD.PATHWAYS / MGD.KD."
        )
    if not labeled:
        return {}, outputs
    if not everything:  # GeneralizedRCNN on the labeled share of the batch
        images = _subset_images(images, labeled)
        features = {k: v[labeled] for k, v in features.items()}
    proposals, proposal_losses = student.proposal_generator(images, features, gt)
    _, detector_losses = student.roi_heads(images, features, proposals, gt)
    return {**detector_losses, **proposal_losses}, outputs
