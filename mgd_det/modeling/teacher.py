"""Build the frozen teacher detector from its own config and load its weights strictly."""
import hashlib
import logging
import os
from typing import List, Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

logger = logging.getLogger(__name__)


class IncompatibleWeightsError(RuntimeError):
    """A checkpoint does not fit the model it is loaded into."""


def _listed(keys: List, limit: Optional[int]) -> str:
    keys = sorted(keys)
    if limit is None or len(keys) <= limit:
        return f"{keys}"
    return f"{keys[:limit]} ... and {len(keys) - limit} more"


def incompatibility_problems(incompatible, limit: Optional[int] = None) -> List[str]:
    """Human-readable missing / unexpected / mis-shaped keys (at most ``limit`` of each)."""
    problems: List[str] = []
    if incompatible.missing_keys:
        problems.append(f"missing keys: {_listed(incompatible.missing_keys, limit)}")
    if incompatible.unexpected_keys:
        problems.append(f"unexpected keys: {_listed(incompatible.unexpected_keys, limit)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k} (file {a}, model {b})" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"shape mismatches: {_listed(shapes, limit)}")
    return problems


class StrictCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that refuses missing, unexpected or mis-shaped keys.

    fvcore only logs such keys; for a teacher that silently means distilling from random
    layers, so here they are an error (or, if allowed, a loud warning).
    """

    def __init__(self, model: nn.Module, what: str, allow_partial: bool = False):
        super().__init__(model, save_to_disk=False)
        self.what = what
        self.allow_partial = allow_partial

    def _log_incompatible_keys(self, incompatible) -> None:
        problems = incompatibility_problems(incompatible)
        if not problems:
            return
        message = f"{self.what} weights do not match its config: " + "; ".join(problems)
        if self.allow_partial:
            logger.warning("PARTIAL LOAD (allowed by config) — %s", message)
            return
        raise IncompatibleWeightsError(
            message + ". Check that the weights were trained with this config (architecture, "
            "depth, number of classes), or set MGD.TEACHER.ALLOW_PARTIAL_LOAD True to accept it."
        )


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _required_file(path: str, key: str, what: str, how_to_set: str) -> str:
    """``path`` if it names an existing file, else a clear error about config ``key``."""
    if not path:
        raise ValueError(f"{key} is empty: {how_to_set}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path} ({key})")
    return path


def build_teacher_cfg(cfg: CfgNode) -> CfgNode:
    """The teacher's plain Detectron2 config, from MGD.TEACHER.CONFIG_FILE and OVERRIDES."""
    from mgd_det.config import get_mgd_cfg

    config_file = _required_file(
        cfg.MGD.TEACHER.CONFIG_FILE, "MGD.TEACHER.CONFIG_FILE", "Teacher config file",
        "set it to the teacher's Detectron2 config (e.g. configs/mini_digits/retinanet_R50_FPN.yaml).",
    )
    teacher_cfg = get_mgd_cfg()
    teacher_cfg.merge_from_file(config_file)
    teacher_cfg.merge_from_list(list(cfg.MGD.TEACHER.OVERRIDES))
    if teacher_cfg.MODEL.META_ARCHITECTURE == "MGDDistiller":
        raise ValueError(f"Teacher config {config_file} is itself an MGD distiller; give a plain detector config.")
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = ""
    teacher_cfg.freeze()
    return teacher_cfg


def build_teacher(cfg: CfgNode, load_weights: bool = True, teacher_cfg: CfgNode = None) -> nn.Module:
    """The teacher detector, weights loaded strictly, frozen and in eval mode.

    ``teacher_cfg`` (from :func:`build_teacher_cfg`) saves re-reading the teacher's config.
    """
    teacher = build_model(teacher_cfg if teacher_cfg is not None else build_teacher_cfg(cfg))
    if load_weights:
        weights = _required_file(
            cfg.MGD.TEACHER.WEIGHTS, "MGD.TEACHER.WEIGHTS", "Teacher weights",
            "the teacher must be a trained detector. Train it with tools/train_net.py on its "
            "plain config and point this key at model_final.pth.",
        )
        StrictCheckpointer(teacher, "Teacher", cfg.MGD.TEACHER.ALLOW_PARTIAL_LOAD).load(weights)
        logger.info("Loaded teacher weights from %s", weights)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()
