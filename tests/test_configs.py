"""Every shipped config parses with the MGD keys; MGD configs resolve their teacher."""
import glob
import os

import pytest

from mgd_det.config import setup_cfg
from mgd_det.modeling import build_teacher_cfg
from mgd_det.modeling.meta_arch import teacher_needs_channel_flip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def test_configs_found():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_parses(path):
    cfg = setup_cfg(path)
    assert len(cfg.MGD.FACTORS) == len(cfg.MGD.POSITIONS)
    if cfg.MODEL.META_ARCHITECTURE == "MGDDistiller":
        teacher = build_teacher_cfg(cfg)
        assert teacher.MODEL.META_ARCHITECTURE in ("RetinaNet", "GeneralizedRCNN")
        assert teacher.MODEL.RESNETS.DEPTH >= cfg.MODEL.RESNETS.DEPTH
        teacher_needs_channel_flip(cfg.INPUT.FORMAT, teacher.INPUT.FORMAT)


def test_coco_pair_flips_channels_between_torchvision_student_and_msra_teacher():
    cfg = setup_cfg(os.path.join(REPO, "configs", "COCO", "mgd_retinanet_R50_R18_AMP_1x.yaml"))
    assert teacher_needs_channel_flip(cfg.INPUT.FORMAT, build_teacher_cfg(cfg).INPUT.FORMAT)
    with pytest.raises(ValueError, match="only RGB<->BGR"):
        teacher_needs_channel_flip("RGB", "YUV-BT.601")


ORIGINAL_DIVISORS = [5e7, 5e7, 5e6, 5e6]  # res2..res5, applied per GPU to the loss / global batch
ORIGINAL_GPUS = 8


@pytest.mark.parametrize("name", ["retinanet", "faster_rcnn", "mask_rcnn"])
def test_coco_factors_reproduce_the_original_weighting_at_8_gpus(name):
    """Original per-rank loss: sum_r / (divisor * global batch), then DDP averages over 8 ranks.
    Ours: factor * sum_r / local batch, DDP-averaged. Equal when factor = 1 / (8 * divisor)."""
    cfg = setup_cfg(os.path.join(REPO, "configs", "COCO", f"mgd_{name}_R50_R18_AMP_1x.yaml"))
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and list(cfg.MGD.POSITIONS) == ["res2", "res3", "res4", "res5"]
    global_batch, local_batch = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.IMS_PER_BATCH // ORIGINAL_GPUS
    for factor, divisor in zip(cfg.MGD.FACTORS, ORIGINAL_DIVISORS):
        # Gradient of one image's summed loss after averaging over the 8 ranks, both ways:
        original = 1.0 / (divisor * global_batch) / ORIGINAL_GPUS
        ours = factor / local_batch / ORIGINAL_GPUS
        assert ours == pytest.approx(original, rel=1e-12)
