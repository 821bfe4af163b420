"""What the benchmarks run: the models, the batches and one training step.

The teacher is built from its config with random weights unless a checkpoint is given:
timing, memory and solve cost do not depend on the weights' values.
"""
import logging
import math
from typing import Dict, List, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from mgd_det.config import setup_cfg
from mgd_det.modeling.meta_arch import MGDDistiller, build_student
from mgd_det.modeling.teacher import StrictCheckpointer, build_teacher

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/mini_digits/mgd_retinanet_R50_R18_AMP.yaml"


def benchmark_cfg(config_file: str = DEFAULT_CONFIG, opts: Sequence[str] = ()) -> CfgNode:
    """The MGD config, frozen; its device resolved by ``setup_cfg`` (CUDA when available)."""
    cfg = setup_cfg(config_file, list(opts))
    cfg.freeze()
    return cfg


def benchmark_teacher(cfg: CfgNode, teacher_weights: str = "") -> nn.Module:
    """The frozen teacher: random weights, or ``teacher_weights`` loaded strictly."""
    teacher = build_teacher(cfg, load_weights=False)
    if teacher_weights:
        StrictCheckpointer(teacher, "Teacher").load(teacher_weights)
        teacher.eval()
    return teacher


def build_models(cfg: CfgNode, teacher_weights: str = "", seed: int = 0):
    """(MGD wrapper, plain student) with identical initial student weights.

    The plain student is built from the same config and receives a copy of the wrapper's
    student state, so both do exactly the same work.
    """
    torch.manual_seed(seed)
    mgd = MGDDistiller(cfg, teacher=benchmark_teacher(cfg, teacher_weights))
    student = build_student(cfg)
    student.load_state_dict(mgd.student.state_dict())
    return mgd, student


def synthetic_batch(
    batch_size: int, size: int, num_classes: int, generator: torch.Generator, boxes_per_image: int = 3,
    masks: bool = False,
) -> List[dict]:
    """Detectron2 training inputs: noise images with a few random boxes each (``masks``: and a
    filled-box mask each, for Mask R-CNN)."""
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        xy = torch.rand(boxes_per_image, 2, generator=generator) * size * 0.7
        wh = (0.1 + 0.2 * torch.rand(boxes_per_image, 2, generator=generator)) * size
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (boxes_per_image,), generator=generator)
        if masks:
            grid = torch.arange(size, dtype=torch.float32)
            x0, y0, x1, y1 = instances.gt_boxes.tensor.unbind(dim=1)
            inside_x = (grid >= x0[:, None]) & (grid <= x1[:, None])
            inside_y = (grid >= y0[:, None]) & (grid <= y1[:, None])
            instances.gt_masks = BitMasks(inside_y[:, :, None] & inside_x[:, None, :])
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def num_classes(cfg: CfgNode) -> int:
    return cfg.MODEL.RETINANET.NUM_CLASSES if "RetinaNet" in cfg.MGD.STUDENT_META_ARCHITECTURE else cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _normalized_images(model: nn.Module, batch: List[dict], divisibility: int) -> torch.Tensor:
    images = [(x["image"].to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std for x in batch]
    return ImageList.from_tensors(images, divisibility).tensor


@torch.no_grad()
def bare_backbone_forward(model: nn.Module, batch: List[dict], divisibility: int = 0) -> Dict[str, torch.Tensor]:
    """Normalise, pad and run ``model.backbone`` (ResNet + FPN) once, no grad, no taps."""
    div = max(divisibility, model.backbone.size_divisibility, 1)
    return model.backbone(_normalized_images(model, batch, div))


class TrainStep:
    """One training step exactly as Detectron2's SimpleTrainer runs it.

    ``loss_dict = model(batch); losses = sum(loss_dict.values()); optimizer.zero_grad();
    losses.backward(); optimizer.step()``, plus the metrics read-back SimpleTrainer does
    (one ``.item()`` per loss). For an :class:`MGDDistiller` at ``MGD.CHECK_FINITE_PERIOD`` 1
    the step flags non-finite features (as every training step then does) and reads the
    flags back after the step.
    """

    def __init__(self, model: nn.Module, cfg: CfgNode):
        self.model = model.train()
        self.optimizer = build_optimizer(cfg, model)
        self.check_finite = isinstance(model, MGDDistiller) and cfg.MGD.CHECK_FINITE_PERIOD == 1
        self.storage = EventStorage()  # the heads log scalars, as under a trainer

    def __call__(self, batch: List[dict]) -> Dict[str, float]:
        with self.storage:  # iteration 0: the model checks its features when the period is 1
            loss_dict = self.model(batch)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.optimizer.step()
        metrics = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
        if self.check_finite:
            self.model.nonfinite_sources(clear=True)
        if not all(math.isfinite(v) for v in metrics.values()):
            logger.warning("non-finite loss in a benchmark step: %s", metrics)
        return metrics


def teacher_divisibility(mgd: MGDDistiller) -> int:
    """The padding divisor MGD uses for the teacher (the coarser of both backbones)."""
    return pair_divisibility(mgd.teacher, mgd.student)


def pair_divisibility(teacher: nn.Module, student: nn.Module) -> int:
    return max(teacher.backbone.size_divisibility, student.backbone.size_divisibility, 1)


def environment() -> Dict[str, object]:
    """Machine and library facts recorded with every result."""
    import os
    import platform

    import detectron2

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu or platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }

