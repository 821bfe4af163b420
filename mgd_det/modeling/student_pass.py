"""The student's training pass: detection losses of the labeled images, distillation taps
of all images.

A batch may mix labeled and unlabeled images (distillation from unlabeled collections).
The backbone (and dense head) runs once over the whole batch; the detection losses are
computed from the labeled images' share of that pass, so a mixed batch keeps them. Follows
Detectron2's own ``forward`` of dense detectors (RetinaNet, FCOS) and of GeneralizedRCNN.

An R-CNN student whose RPN or ROI heads are distilled (:data:`~mgd_det.matching.outputs.RPN`,
``REGIONS``, ``MASKS``) runs its RPN on *every* image of the batch -- the RPN outputs and the
proposals are what those pathways read -- and its RPN and ROI losses on the labeled share, by
Detectron2's own methods (:func:`_rcnn_pass_with_outputs`).
"""
from typing import AbstractSet, Dict, List, Tuple

import torch
from detectron2.structures import ImageList

from mgd_det.matching.outputs import DENSE, MASKS, REGIONS, RPN, NetOutputs
from mgd_det.errors import ConfigError
from mgd_det.ground_truth import is_unlabeled

RCNN_OUTPUTS = frozenset((RPN, REGIONS, MASKS))


def _subset_images(images: ImageList, index: List[int]) -> ImageList:
    return ImageList(images.tensor[index], [images.image_sizes[i] for i in index])


def run_student(student, batched_inputs, taps, reads: AbstractSet[str] = frozenset()
                ) -> Tuple[Dict[str, torch.Tensor], NetOutputs]:
    """(detection losses of the labeled images, tapped student outputs of all images, with the
    head outputs of the kinds in ``reads``)."""
    need_head = DENSE in reads
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
    if reads & RCNN_OUTPUTS:
        return _rcnn_pass_with_outputs(student, images, features, gt, labeled, outputs)
    if not labeled:
        return {}, outputs
    if not everything:  # GeneralizedRCNN on the labeled share of the batch
        images = _subset_images(images, labeled)
        features = {k: v[labeled] for k, v in features.items()}
    proposals, proposal_losses = student.proposal_generator(images, features, gt)
    _, detector_losses = student.roi_heads(images, features, proposals, gt)
    return {**detector_losses, **proposal_losses}, outputs


def _flatten_rpn_outputs(rpn, logits: List[torch.Tensor], deltas: List[torch.Tensor]):
    """The RPN head's (N, A, H, W) / (N, A*4, H, W) outputs per level in the layout
    ``RPN.losses`` and ``RPN.predict_proposals`` take: (N, H*W*A) and (N, H*W*A, 4) (the
    transposition Detectron2's ``RPN.forward`` applies)."""
    box_dim = rpn.anchor_generator.box_dim
    flat_logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    flat_deltas = [x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
                   for x in deltas]
    return flat_logits, flat_deltas


def _rcnn_pass_with_outputs(student, images: ImageList, features, gt, labeled: List[int], outputs: NetOutputs):
    """GeneralizedRCNN's training pass, step by step: the RPN head on every image (its outputs,
    proposals and backbone features recorded for the distillation), the RPN and ROI losses on
    the labeled images (the same calls, in the same order, as Detectron2's RPN.forward)."""
    rpn = student.proposal_generator
    levels = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(levels)
    outputs.rpn_logits, outputs.rpn_deltas = rpn.rpn_head(levels)
    flat_logits, flat_deltas = _flatten_rpn_outputs(rpn, outputs.rpn_logits, outputs.rpn_deltas)
    losses = {}
    if labeled:
        gt_labels, gt_boxes = rpn.label_and_sample_anchors(anchors, gt)
        losses = rpn.losses(anchors, [x[labeled] for x in flat_logits], gt_labels, [x[labeled] for x in flat_deltas],
                            gt_boxes)
    proposals = rpn.predict_proposals(anchors, flat_logits, flat_deltas, images.image_sizes)
    outputs.head_inputs = features
    outputs.proposals = [p.proposal_boxes.tensor for p in proposals]
    if not labeled:
        return {}, outputs
    if len(labeled) < len(images):
        images = _subset_images(images, labeled)
        features = {k: v[labeled] for k, v in features.items()}
    _, detector_losses = student.roi_heads(images, features, [proposals[i] for i in labeled], gt)
    return {**detector_losses, **losses}, outputs
