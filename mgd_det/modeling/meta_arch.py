"""The MGD meta-architecture: a frozen teacher distils a trainable student through features."""
import logging
import math
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import ImageList
from torch import nn

from mgd_det.matching.distiller import MatchingDistiller, PositionSpec
from mgd_det.matching.kd import hinton_kd_loss
from mgd_det.matching.margins import margin_from_norm
from mgd_det.modeling.feature_taps import FeatureTaps
from mgd_det.modeling.teacher import build_teacher, build_teacher_cfg, file_sha256
from mgd_det.modeling.weighting import build_loss_weighting

logger = logging.getLogger(__name__)


def _digest_tensor(hex_digest: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(hex_digest)), dtype=torch.uint8)


def teacher_needs_channel_flip(student_format: str, teacher_format: str) -> bool:
    """Whether the teacher needs the student's images with RGB<->BGR swapped.

    The data loader decodes images in the *student's* INPUT.FORMAT; a teacher trained on
    the other channel order (e.g. MSRA R-50 in BGR, torchvision R-18 in RGB) must see its own.
    """
    if student_format == teacher_format:
        return False
    if {student_format, teacher_format} == {"RGB", "BGR"}:
        return True
    raise ValueError(
        f"Teacher INPUT.FORMAT {teacher_format!r} and student INPUT.FORMAT {student_format!r} "
        "differ and only RGB<->BGR can be converted; train both on the same format."
    )


def build_student(cfg: CfgNode) -> nn.Module:
    """The student: a plain detector described by cfg.MODEL with the student's meta-arch."""
    student_cfg = cfg.clone()
    student_cfg.defrost()
    student_cfg.MODEL.META_ARCHITECTURE = cfg.MGD.STUDENT_META_ARCHITECTURE
    if student_cfg.MODEL.META_ARCHITECTURE == "MGDDistiller":
        raise ValueError("MGD.STUDENT_META_ARCHITECTURE must be a plain detector, e.g. 'RetinaNet'.")
    student_cfg.freeze()
    return build_model(student_cfg)


@META_ARCH_REGISTRY.register()
class MGDDistiller(nn.Module):
    """Wraps a student detector (``self.student``) and a frozen teacher.

    Training returns the student's detection losses plus ``loss_mgd_<position>`` (and
    ``loss_kd`` if enabled); inference returns the student's predictions, so Detectron2's
    evaluators work unchanged.

    The teacher is deliberately *not* a registered sub-module: it stays out of
    ``state_dict`` (checkpoints hold the student and the distillation state only; the
    teacher is reloaded from its own file), out of DDP, and out of ``model.train()``.
    ``_apply`` forwards device/dtype moves to it.
    """

    def __init__(self, cfg: CfgNode, teacher: Optional[nn.Module] = None):
        super().__init__()
        positions = list(cfg.MGD.POSITIONS)
        factors = list(cfg.MGD.FACTORS)
        if len(factors) != len(positions):
            raise ValueError(
                f"MGD.FACTORS has {len(factors)} entries but MGD.POSITIONS has {len(positions)} "
                f"({positions}); give one factor per position."
            )
        self.student = build_student(cfg)
        teacher_cfg = build_teacher_cfg(cfg)
        load_teacher = teacher is None
        if load_teacher:
            teacher = build_teacher(cfg, teacher_cfg=teacher_cfg)
        # object.__setattr__ bypasses nn.Module registration: see the class docstring.
        object.__setattr__(self, "_teacher", teacher)
        for param in self._teacher.parameters():
            param.requires_grad_(False)
        self._teacher.eval()
        self.flip_teacher_channels = teacher_needs_channel_flip(cfg.INPUT.FORMAT, teacher_cfg.INPUT.FORMAT)
        self.register_buffer("teacher_sha256", torch.zeros(32, dtype=torch.uint8))
        if load_teacher:
            self.teacher_sha256.copy_(_digest_tensor(file_sha256(cfg.MGD.TEACHER.WEIGHTS)))

        self.student_taps = FeatureTaps(self.student.backbone, positions, "student")
        self.teacher_taps = FeatureTaps(self._teacher.backbone, positions, "teacher")
        specs = [
            PositionSpec(
                name=p,
                student_channels=self.student_taps.channels(p),
                teacher_channels=self.teacher_taps.channels(p),
                factor=float(f),
            )
            for p, f in zip(positions, factors)
        ]
        self.distiller = MatchingDistiller(
            specs,
            reducer=cfg.MGD.REDUCER,
            student_norm=cfg.MGD.STUDENT_NORM,
            weighting=build_loss_weighting(cfg, positions),
            num_groups=cfg.MGD.NORM_GROUPS,
            allow_sharing=cfg.MGD.ALLOW_CHANNEL_SHARING,
        ).to(self.student.device)
        self.kd_weight = cfg.MGD.KD.WEIGHT if cfg.MGD.KD.ENABLED else 0.0
        # What the teacher runs each step: its ResNet alone unless an FPN position or KD reads
        # more. Unregistered, like the teacher itself (not in state_dict, parameters or DDP).
        object.__setattr__(self, "_teacher_network",
                           self._teacher.backbone if self.kd_weight else self.teacher_taps.smallest_network())
        self.kd_temperature = cfg.MGD.KD.TEMPERATURE
        if self.kd_weight:
            self._check_kd_compatible()
        self.check_finite = False  # set by the hook on iterations that check features
        self.nonfinite_report: Optional[Dict[str, torch.Tensor]] = None
        self.refresh_margins()

    # ---------------------------------------------------------------- plumbing
    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    @property
    def device(self) -> torch.device:
        return self.student.device

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.eval()  # the teacher is always in eval mode
        return self

    def teacher_digest(self) -> str:
        return bytes(self.teacher_sha256.tolist()).hex()

    def refresh_margins(self) -> None:
        """Margins from the teacher's norm layers before each tapped ReLU (none for FPN)."""
        self.distiller.set_margins(
            {p: margin_from_norm(self.teacher_taps.norm_before_relu(p)) for p in self.distiller_positions}
        )

    @property
    def distiller_positions(self) -> List[str]:
        return list(self.student_taps.positions)

    def _check_kd_compatible(self) -> None:
        heads = [getattr(m, "head", None) for m in (self.student, self._teacher)]
        if not all(h is not None and hasattr(h, "cls_score") for h in heads):
            raise ValueError(
                "MGD.KD.ENABLED needs dense (RetinaNet) heads on both teacher and student; "
                "output KD for R-CNN heads is not supported. Disable MGD.KD or use RetinaNet."
            )
        shapes = [h.cls_score.out_channels for h in heads]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"MGD.KD: student and teacher heads predict {shapes[0]} and {shapes[1]} logits per "
                "location; they need the same classes and anchors per location."
            )

    # ---------------------------------------------------------------- features
    def _padded_size(self, batched_inputs) -> tuple:
        div = max(self.student.backbone.size_divisibility, 1)
        h = max(x["image"].shape[-2] for x in batched_inputs)
        w = max(x["image"].shape[-1] for x in batched_inputs)
        return (math.ceil(h / div) * div, math.ceil(w / div) * div)

    @torch.no_grad()
    def teacher_features(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """Teacher features once, on the student's padded canvas, no grad.

        Only what is read runs: the teacher's ResNet alone when every position is a ``resN``
        and output KD is off, its whole backbone (with FPN) otherwise, plus its head for KD.
        """
        teacher = self._teacher
        images = [teacher._move_to_current_device(x["image"]) for x in batched_inputs]
        if self.flip_teacher_channels:
            images = [x.flip(0) for x in images]
        images = [(x - teacher.pixel_mean) / teacher.pixel_std for x in images]
        div = max(teacher.backbone.size_divisibility, self.student.backbone.size_divisibility, 1)
        images = ImageList.from_tensors(images, div)
        with self.teacher_taps.capture() as feats:
            outputs = self._teacher_network(images.tensor)
        feats["_canvas"] = (tuple(images.tensor.shape[-2:]), self._padded_size(batched_inputs))
        if self.kd_weight:
            feats["_head_logits"] = teacher.head([outputs[f] for f in teacher.head_in_features])[0]
        return feats

    @staticmethod
    def _crop_to_student(teacher_feats, student_feats):
        """Drop the teacher's extra bottom/right padding when it needed a coarser canvas.

        Only a difference explained by padding is cropped: at a position of stride ``s`` the
        teacher map must be ``ceil(teacher canvas / s)`` where ``s`` is the student's stride
        there. Anything else (e.g. a dilated teacher stage) is left for the distiller to
        report as a spatial mismatch.
        """
        teacher_canvas, student_canvas = teacher_feats.pop("_canvas")
        for name, s in student_feats.items():
            t = teacher_feats[name]
            if t.shape[-2:] == s.shape[-2:]:
                continue
            expected = tuple(
                math.ceil(tc * sf / sc) for tc, sf, sc in zip(teacher_canvas, s.shape[-2:], student_canvas)
            )
            if tuple(t.shape[-2:]) == expected:
                teacher_feats[name] = t[..., : s.shape[-2], : s.shape[-1]]
        return teacher_feats

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs):
        """Eval: the student's predictions. Training: detection + distillation losses.

        Ground truth is optional: a training batch without ``instances`` (unlabeled images)
        runs the student's backbone (and, with output KD, its head) only and returns the
        distillation losses alone.
        """
        if not self.training:
            return self.student(batched_inputs)
        labeled = all("instances" in x for x in batched_inputs)
        teacher_feats = self.teacher_features(batched_inputs)
        teacher_logits = teacher_feats.pop("_head_logits", None)
        student_logits = []
        hook = None
        if self.kd_weight:
            hook = self.student.head.register_forward_hook(lambda m, i, o: student_logits.extend(o[0]))
        try:
            with self.student_taps.capture() as student_feats:
                losses = self.student(batched_inputs) if labeled else self._student_features_only(batched_inputs)
        finally:
            if hook is not None:
                hook.remove()
        teacher_feats = self._crop_to_student(teacher_feats, student_feats)
        if self.check_finite:
            flags = self._nonfinite_flags(student_feats, teacher_feats)
            previous = self.nonfinite_report or {}
            self.nonfinite_report = {k: v | previous[k] if k in previous else v for k, v in flags.items()}
        losses.update(self.distiller(student_feats, teacher_feats))
        if self.kd_weight:
            losses["loss_kd"] = self.kd_weight * sum(
                hinton_kd_loss(s, t, self.kd_temperature, kind="sigmoid")
                for s, t in zip(student_logits, teacher_logits)
            ) / len(student_logits)
        return losses

    def _student_features_only(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """Label-free step: the student's backbone, plus its dense head if KD needs logits."""
        images = self.student.preprocess_image(batched_inputs)
        features = self.student.backbone(images.tensor)
        if self.kd_weight:
            self.student.head([features[f] for f in self.student.head_in_features])
        return {}

    @staticmethod
    def _nonfinite_flags(student_feats, teacher_feats) -> Dict[str, torch.Tensor]:
        """Per position and net, a device flag "went non-finite" (no host sync here).

        Flags accumulate over steps; the assignment hook reads them only when training
        stops, to name the position where a NaN/Inf loss came from.
        """
        flags = {}
        for name in student_feats:
            # One reduction per map: a NaN/Inf anywhere makes the sum non-finite (finite
            # features of any sane magnitude cannot overflow float32 when summed).
            flags[f"student {name}"] = ~torch.isfinite(student_feats[name].detach().sum())
            flags[f"teacher {name}"] = ~torch.isfinite(teacher_feats[name].sum())
        return flags

    # ---------------------------------------------------------------- tracking
    @torch.no_grad()
    def track_batch(self, batched_inputs) -> None:
        """Accumulate matching costs for one batch; both nets must already be in eval mode."""
        teacher_feats = self.teacher_features(batched_inputs)
        teacher_feats.pop("_head_logits", None)
        images = self.student.preprocess_image(batched_inputs)
        with self.student_taps.capture() as student_feats:
            self.student.backbone(images.tensor)
        self.distiller.track(student_feats, self._crop_to_student(teacher_feats, student_feats))
