"""RetinaNet whose training loss runs for the whole batch at once, without host synchronisation.

Detectron2's :class:`~detectron2.modeling.RetinaNet` matches anchors image by image
(``label_anchors``: an IoU matrix, the :class:`~detectron2.modeling.matcher.Matcher` and
boolean-mask assignments per image) and reads the number of foreground anchors back to the host
(``.item()``) for its loss normaliser and metric. On a GPU each of these waits for the device:
three per image plus nine per batch, 57 for a batch of 16 (docs/BENCHMARKS.md §9), and every
blocking upload of an image or a box tensor waits too: the step is bound by the host, not the GPU.

:class:`BatchedRetinaNet` (``MODEL.META_ARCHITECTURE`` or ``MGD.STUDENT_META_ARCHITECTURE``
``"BatchedRetinaNet"``) keeps everything else of Detectron2's RetinaNet (backbone, head,
anchors, inference, weights: its state_dict is the same) and replaces its training path:

* ``label_anchors``: the ground-truth boxes padded to ``[N, G]``, one ``[N, G, R]`` IoU tensor,
  the matcher's thresholds and low-quality matches by ``torch.where`` — the same labels and
  matched boxes as Detectron2's per-image loop.
* ``losses``: focal loss and box regression over all anchors with the ignored / background
  ones zeroed by ``torch.where`` instead of boolean indexing; the loss normaliser's EMA kept
  in a device buffer (read as a float through the usual ``loss_normalizer`` attribute, so
  checkpoints and DistPro's snapshots keep working); the ``num_pos_anchors`` metric summed on
  the device and written once per ``metric_period`` iterations (one host read per period).
* ``forward``: the images and boxes go to the device with non-blocking copies.

The losses equal Detectron2's to float rounding (``tests/modeling/test_batched_retinanet.py``). The IoU
tensor is ``N x G x R``: fine for the bundled 128² recipe, large for COCO-sized images with many
boxes. Under DDP the EMA buffer is broadcast from rank 0 with the other buffers at each forward,
so every rank continues rank 0's EMA (Detectron2 keeps one Python float per rank).
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import cat, ciou_loss, diou_loss
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, sigmoid_focal_loss_jit, smooth_l1_loss
from torch.nn.utils.rnn import pad_sequence

from mgd_det.modeling.uploads import upload_inputs

__all__ = ["BatchedRetinaNet", "encode_boxes"]

# Detectron2's initial value and momentum of the foreground-count EMA (DenseDetector._ema_update).
_NORMALIZER_INIT, _NORMALIZER_MOMENTUM = 100.0, 0.9
_BOX_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def encode_boxes(transform: Box2BoxTransform, src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``transform.get_deltas(src, target)`` for ``[..., 4]`` boxes, without its host check.

    Detectron2's version asserts ``(src_widths > 0).all().item()``: a host read per call. Here
    ``src`` are the generator's anchors, positive by construction, so the check is left out.
    """
    src_w, src_h = src[..., 2] - src[..., 0], src[..., 3] - src[..., 1]
    tgt_w, tgt_h = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    src_x, src_y = src[..., 0] + 0.5 * src_w, src[..., 1] + 0.5 * src_h
    tgt_x, tgt_y = target[..., 0] + 0.5 * tgt_w, target[..., 1] + 0.5 * tgt_h
    wx, wy, ww, wh = transform.weights
    return torch.stack(
        (wx * (tgt_x - src_x) / src_w, wy * (tgt_y - src_y) / src_h,
         ww * torch.log(tgt_w / src_w), wh * torch.log(tgt_h / src_h)),
        dim=-1,
    )


def _batched_iou(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of ``gt`` ``[N, G, 4]`` with ``anchors`` ``[R, 4]``: ``[N, G, R]``, computed as
    Detectron2's ``pairwise_iou`` (same operations, so the same values)."""
    g, a = gt[:, :, None, :], anchors[None, None]
    wh = (torch.min(g[..., 2:], a[..., 2:]) - torch.max(g[..., :2], a[..., :2])).clamp_(min=0)
    inter = wh.prod(dim=-1)
    area_g = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    union = area_g[..., None] + area_a - inter
    return torch.where(inter > 0, inter / union, torch.zeros((), dtype=inter.dtype, device=inter.device))


@META_ARCH_REGISTRY.register()
class BatchedRetinaNet(RetinaNet):
    """Detectron2's RetinaNet with a batched, synchronisation-free training loss (module doc)."""

    metric_period = 20  # iterations per num_pos_anchors read: Detectron2's default writer period

    @configurable  # built from a cfg by RetinaNet.from_config, as Detectron2's
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # float64 like Detectron2's Python-float EMA; not persistent: the state_dict stays
        # RetinaNet's and the EMA travels as ``loss_normalizer`` (mgd_det/engine/snapshots.py).
        self.register_buffer("_normalizer_ema", torch.tensor(_NORMALIZER_INIT, dtype=torch.float64), False)
        self.register_buffer("_num_pos_sum", torch.zeros((), dtype=torch.float64), False)
        self._normalizer_started = False
        self._num_pos_images = 0

    # The EMA as Detectron2 exposes it: absent until the first training pass, then a float.
    @property
    def loss_normalizer(self) -> float:
        if not self._normalizer_started:
            raise AttributeError("loss_normalizer")
        return float(self._normalizer_ema)  # a host read, only when asked for

    @loss_normalizer.setter
    def loss_normalizer(self, value: float) -> None:
        self._normalizer_ema.fill_(float(value))
        self._normalizer_started = True

    @loss_normalizer.deleter
    def loss_normalizer(self) -> None:
        self._normalizer_ema.fill_(_NORMALIZER_INIT)
        self._normalizer_started = False

    def forward(self, batched_inputs):
        """Detectron2's forward, after one non-blocking upload of the images and boxes (its own
        copies block the host per image and per field; mgd_det/modeling/uploads.py)."""
        return super().forward(upload_inputs(batched_inputs, self.device))

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """(labels ``[N, R]`` in {-1 ignore, 0..K-1, K background}, matched boxes ``[N, R, 4]``),
        the values of Detectron2's per-image ``label_anchors``, stacked."""
        anchors = Boxes.cat(anchors).tensor  # [R, 4]
        gt_boxes = pad_sequence([g.gt_boxes.tensor.to(anchors.dtype) for g in gt_instances], batch_first=True)
        gt_classes = pad_sequence([g.gt_classes for g in gt_instances], batch_first=True, padding_value=-1)
        if gt_boxes.shape[1] == 0:  # no image has a box: one padded slot keeps the shapes
            gt_boxes = anchors.new_zeros((len(gt_instances), 1, 4))
            gt_classes = torch.full((len(gt_instances), 1), -1, dtype=torch.int64, device=anchors.device)
        valid = gt_classes >= 0  # [N, G]
        iou = torch.where(valid[..., None], _batched_iou(gt_boxes, anchors), -1.0)  # padding never wins
        matched_vals, matched_idxs = iou.max(dim=1)  # [N, R]

        matcher = self.anchor_matcher
        match_labels = torch.ones_like(matched_idxs, dtype=torch.int8)
        for label, low, high in zip(matcher.labels, matcher.thresholds[:-1], matcher.thresholds[1:]):
            match_labels = torch.where((matched_vals >= low) & (matched_vals < high), label, match_labels)
        if matcher.allow_low_quality_matches:  # anchors with a gt's highest IoU (ties included)
            best = iou.max(dim=2, keepdim=True).values
            match_labels = torch.where(((iou == best) & valid[..., None]).any(dim=1), 1, match_labels)

        gt_labels = gt_classes.gather(1, matched_idxs)
        gt_labels = torch.where(match_labels == 0, self.num_classes, gt_labels)
        gt_labels = torch.where(match_labels == -1, -1, gt_labels)
        gt_labels = torch.where(valid.any(dim=1, keepdim=True), gt_labels, self.num_classes)  # no boxes
        matched_boxes = gt_boxes.gather(1, matched_idxs[..., None].expand(-1, -1, 4))
        return gt_labels, matched_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Detectron2's RetinaNet losses from ``label_anchors``' tensors, on the device."""
        gt_labels = torch.stack(list(gt_labels)) if isinstance(gt_labels, (list, tuple)) else gt_labels
        gt_boxes = torch.stack(list(gt_boxes)) if isinstance(gt_boxes, (list, tuple)) else gt_boxes
        valid = gt_labels >= 0
        pos = valid & (gt_labels != self.num_classes)
        num_pos = pos.sum()
        self._log_num_pos(num_pos, len(gt_labels))
        normalizer = self._update_normalizer(num_pos)

        logits = cat(pred_logits, dim=1)  # [N, R, K]
        # One-hot over the K classes (background and ignored: all zero). F.one_hot checks its
        # input's range with two host reads on the CPU.
        classes = torch.arange(self.num_classes, device=gt_labels.device)
        target = gt_labels[..., None] == classes
        loss_cls = sigmoid_focal_loss_jit(
            logits, target.to(logits.dtype), alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="none"
        )
        loss_cls = torch.where(valid[..., None], loss_cls, 0.0).sum()
        loss_box_reg = self._box_loss(Boxes.cat(anchors).tensor, cat(pred_anchor_deltas, dim=1), gt_boxes, pos)
        dtype = loss_cls.dtype
        return {"loss_cls": loss_cls / normalizer.to(dtype), "loss_box_reg": loss_box_reg / normalizer.to(dtype)}

    def _box_loss(self, anchors, deltas, gt_boxes, pos):
        """Sum over the foreground anchors of Detectron2's dense box loss."""
        anchors = anchors.expand_as(gt_boxes)
        # Background anchors regress onto themselves: finite values, then zeroed.
        gt_boxes = torch.where(pos[..., None], gt_boxes, anchors)
        if self.box_reg_loss_type == "smooth_l1":
            target = encode_boxes(self.box2box_transform, anchors, gt_boxes)
            per_anchor = smooth_l1_loss(deltas, target, beta=self.smooth_l1_beta, reduction="none").sum(dim=-1)
        elif self.box_reg_loss_type in _BOX_LOSSES:
            boxes = self.box2box_transform.apply_deltas(deltas.reshape(-1, 4), anchors.reshape(-1, 4))
            per_anchor = _BOX_LOSSES[self.box_reg_loss_type](boxes, gt_boxes.reshape(-1, 4), reduction="none")
            per_anchor = per_anchor.reshape(pos.shape)
        else:
            raise ValueError(f"Invalid dense box regression loss type '{self.box_reg_loss_type}'")
        return torch.where(pos, per_anchor, 0.0).sum()

    def _update_normalizer(self, num_pos: torch.Tensor) -> torch.Tensor:
        """Detectron2's EMA ``old * 0.9 + max(num_pos, 1) * 0.1``, in the device buffer."""
        if not self._normalizer_started:
            self.loss_normalizer = _NORMALIZER_INIT
        value = num_pos.clamp(min=1).to(torch.float64)
        self._normalizer_ema.copy_(self._normalizer_ema * _NORMALIZER_MOMENTUM + value * (1 - _NORMALIZER_MOMENTUM))
        return self._normalizer_ema

    def _log_num_pos(self, num_pos: torch.Tensor, num_images: int) -> None:
        """``num_pos_anchors`` per image, averaged over the period, written at its last iteration."""
        self._num_pos_sum += num_pos
        self._num_pos_images += num_images
        storage = get_event_storage()
        if (storage.iter + 1) % self.metric_period == 0:
            storage.put_scalar("num_pos_anchors", self._num_pos_sum / max(self._num_pos_images, 1), smoothing_hint=False)
            self._num_pos_sum.zero_()
            self._num_pos_images = 0
