"""Label-free and mixed training of a Mask R-CNN student through the real trainer: the
student's RPN, box and mask heads learn from the teacher's outputs (RPN_KD, RPN_BOX, ROI_KD,
ROI_BOX, MASK_KD), logged like any loss; with labeled images mixed in, the detection losses
come back beside them."""
import math

import pytest

from test_resume import run

pytestmark = pytest.mark.slow

LABEL_FREE = "mgd_mask_rcnn_R50_R18_labelfree_train.yaml"
SMALL = ["MGD.TEACHER.CONFIG_FILE", "mask_rcnn_R18_FPN.yaml", "MGD.RCNN.ROIS_PER_IMAGE", "16",
         "SOLVER.MAX_ITER", "3"]
OUTPUT_LOSSES = {"loss_rpn_kd", "loss_rpn_box", "loss_roi_kd", "loss_roi_box", "loss_mask_kd"}
DETECTION_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}


def test_a_label_free_mask_rcnn_student_trains_through_its_heads_outputs(tmp_path, tiny_cfg):
    cfg = tiny_cfg(LABEL_FREE, tmp_path, "DATASETS.TRAIN", "('mini_digits_tiny_train_images',)", *SMALL)
    _, losses = run(cfg)
    assert sorted(losses) == [0, 1, 2]
    for step in losses.values():
        assert OUTPUT_LOSSES <= set(step) and not DETECTION_LOSSES & set(step)
        assert all(math.isfinite(v) for v in step.values())


def test_mixed_batches_keep_the_detection_losses_beside_the_output_distillation(tmp_path, tiny_cfg):
    cfg = tiny_cfg(LABEL_FREE, tmp_path, "DATASETS.TRAIN", "('mini_digits_tiny_train', 'mini_digits_tiny_train_images')",
                   "SOLVER.IMS_PER_BATCH", "4", *SMALL, "SOLVER.MAX_ITER", "2",
                   "MGD.PATHWAYS", str([f"{k[5:].upper()}:1.0" for k in sorted(OUTPUT_LOSSES)]))
    _, losses = run(cfg)
    for step in losses.values():
        assert OUTPUT_LOSSES | DETECTION_LOSSES <= set(step)
