"""The MGD meta-architecture: a frozen teacher distils a trainable student through features."""
import logging
import math
from typing import Dict, Iterator, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from mgd_det.cfg_facts import MGD_META_ARCHITECTURE
from mgd_det.config_checks import number_problems, register_config_check
from mgd_det.errors import ConfigError
from mgd_det.matching.families import reads as family_reads
from mgd_det.matching.margins import margin_from_norm
from mgd_det.matching.outputs import DENSE, MASKS, REGIONS, RPN, Canvas, TeacherOutput
from mgd_det.modeling.feature_taps import FeatureTaps
from mgd_det.modeling.head_checks import check_heads
from mgd_det.modeling.region_pass import attach_regions
from mgd_det.modeling.student_pass import run_student
from mgd_det.modeling.teacher import build_teacher, build_teacher_cfg, file_sha256
from mgd_det.modeling.uploads import upload_inputs
from mgd_det.modeling.pathway_config import build_pathway_distiller, pathway_specs_from_cfg
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
    if student_cfg.MODEL.META_ARCHITECTURE == MGD_META_ARCHITECTURE:
        raise ValueError("MGD.STUDENT_META_ARCHITECTURE must be a plain detector, e.g. 'RetinaNet'.")
    student_cfg.freeze()
    return build_model(student_cfg)


@META_ARCH_REGISTRY.register()
class MGDDistiller(nn.Module):
    """Wraps a student detector (``self.student``) and a frozen teacher.

    Training step: teacher pass -> :class:`TeacherOutput`; student pass -> detection losses
    of the labeled images and the student's tapped outputs; the :class:`PathwayDistiller`
    turns both into one weighted loss per pathway (``loss_<pathway>``, e.g.
    ``loss_mgd_res3``, ``loss_kd``). Inference returns the student's predictions, so
    Detectron2's evaluators work unchanged.

    The teacher is deliberately *not* a registered sub-module: it stays out of
    ``state_dict`` (checkpoints hold the student and the distillation state only; the
    teacher is reloaded from its own file), out of DDP, and out of ``model.train()``.
    ``_apply`` forwards device/dtype moves to it.
    """

    def __init__(self, cfg: CfgNode, teacher: Optional[nn.Module] = None):
        super().__init__()
        specs = pathway_specs_from_cfg(cfg)
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

        positions = list(dict.fromkeys(s.position for s in specs if s.position))
        sources = list(dict.fromkeys(s.source for s in specs if s.source))  # the teacher's positions
        self.student_taps = FeatureTaps(self.student.backbone, positions, "student")
        self.teacher_taps = FeatureTaps(self._teacher.backbone, sources, "teacher")
        check_heads(self.student, self._teacher, {family_reads(s.family) for s in specs})
        self.distiller = build_pathway_distiller(  # the MGD.* keys; errors name them
            cfg, specs, {p: (self.student_taps.channels(p) if p in positions else 0,
                             self.teacher_taps.channels(p) if p in sources else 0) for p in positions + sources},
            num_classes=getattr(self.student, "num_classes", 0), weighting=build_loss_weighting(cfg, specs),
        ).to(self.student.device)
        # ROIs per image of the ROI and mask pathways (the student's most confident proposals),
        # and how many of them the mask heads run on at most (the teacher's surest foreground)
        self.rois_per_image = cfg.MGD.RCNN.ROIS_PER_IMAGE
        self.mask_rois_per_image = cfg.MGD.RCNN.MASK_ROIS_PER_IMAGE
        # What the teacher runs each step: its ResNet alone unless an FPN position or a head
        # pathway reads more. Unregistered, like the teacher itself.
        object.__setattr__(self, "_teacher_network",
                           self._teacher.backbone if self.needs_head else self.teacher_taps.smallest_network())
        # Training forwards at iterations that are multiples of this check the features for
        # NaN/Inf (0: never); see forward and nonfinite_sources.
        self.check_finite_period = cfg.MGD.CHECK_FINITE_PERIOD
        self._nonfinite: Dict[str, torch.Tensor] = {}  # device flags, accumulated over checked steps
        self.refresh_margins()

    # ---------------------------------------------------------------- plumbing
    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    @property
    def device(self) -> torch.device:
        return self.student.device

    @property
    def needs_head(self) -> bool:
        """Whether a pathway reads head outputs (dense, RPN, ROI or mask heads)."""
        return self.distiller.needs_head

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
            {m.position: margin_from_norm(self.teacher_taps.norm_before_relu(m.position))
             for m in self.distiller.matchers.values()}
        )

    @property
    def distiller_positions(self) -> List[str]:
        return list(self.student_taps.positions)

    # ---------------------------------------------------------------- passes
    def upload(self, batched_inputs) -> List[dict]:
        """The batch with its images and boxes on the model's device: one non-blocking copy,
        read by both nets."""
        return upload_inputs(batched_inputs, self.device)

    def _padded_size(self, batched_inputs) -> tuple:
        div = max(self.student.backbone.size_divisibility, 1)
        h = max(x["image"].shape[-2] for x in batched_inputs)
        w = max(x["image"].shape[-1] for x in batched_inputs)
        return (math.ceil(h / div) * div, math.ceil(w / div) * div)

    @torch.no_grad()
    def teacher_pass(self, batched_inputs) -> TeacherOutput:
        """The teacher's tapped features (and head outputs when a pathway reads them), no grad.

        Only what is read runs: the teacher's ResNet alone when every position is a ``resN``
        and no head pathway is used, its whole backbone (with FPN) otherwise, plus its dense
        head or its RPN head. Its ROI heads run later, on the student's proposals
        (:mod:`~mgd_det.modeling.region_pass`): their inputs are kept in ``head_inputs``.
        The images must already be on the device (see :meth:`upload`).
        """
        teacher = self._teacher
        images = [x["image"] for x in batched_inputs]
        if self.flip_teacher_channels:
            images = [x.flip(0) for x in images]
        images = [(x - teacher.pixel_mean) / teacher.pixel_std for x in images]
        div = max(teacher.backbone.size_divisibility, self.student.backbone.size_divisibility, 1)
        images = ImageList.from_tensors(images, div)
        with self.teacher_taps.capture() as feats:
            outputs = self._teacher_network(images.tensor)
        result = TeacherOutput(
            features=feats,
            canvas=Canvas(tuple(images.tensor.shape[-2:]), self._padded_size(batched_inputs)),
        )
        reads = self.distiller.reads
        if DENSE in reads:
            result.logits, result.box_deltas = teacher.head([outputs[f] for f in teacher.head_in_features])
        if RPN in reads:
            rpn = teacher.proposal_generator
            result.rpn_logits, result.rpn_deltas = rpn.rpn_head([outputs[f] for f in rpn.in_features])
        if REGIONS in reads or MASKS in reads:
            result.head_inputs = outputs
        return result

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs):
        """Eval: the student's predictions. Training: detection + distillation losses.

        Ground truth is optional per image: unlabeled images contribute to the distillation
        pathways only, labeled ones to the detection losses as well.
        """
        if not self.training:
            return self.student(batched_inputs)
        detection, raw = self.split_losses(batched_inputs, check_finite=self._check_due())
        return {**detection, **self.distiller.weighted(raw)}

    def _check_due(self) -> bool:
        """Whether this training forward checks its features: at every CHECK_FINITE_PERIOD-th
        iteration of Detectron2's current EventStorage (as its models decide ``vis_period``;
        their training forwards need that storage anyway)."""
        period = self.check_finite_period
        return bool(period) and get_event_storage().iter % period == 0

    def split_losses(self, batched_inputs, teacher_out: Optional[TeacherOutput] = None, check_finite: bool = False):
        """(detection losses of the labeled images, unweighted pathway losses) of one batch.

        ``teacher_out`` may be passed in when the caller already has it for this batch (the
        teacher is frozen: its output does not change while the student moves).
        ``check_finite``: also flag non-finite features (read by :meth:`nonfinite_sources`).
        """
        batched_inputs = self.upload(batched_inputs)
        if teacher_out is None:
            teacher_out = self.teacher_pass(batched_inputs)
        reads = self.distiller.reads
        detection, student_out = run_student(self.student, batched_inputs, self.student_taps, reads)
        if REGIONS in reads or MASKS in reads:
            attach_regions(self.student, self._teacher, student_out, teacher_out, reads, self.rois_per_image,
                           self.mask_rois_per_image, self.distiller.held_factors)
        if check_finite:
            flags = self._nonfinite_flags(student_out.features, teacher_out.features)
            previous = self._nonfinite
            self._nonfinite = {k: v | previous[k] if k in previous else v for k, v in flags.items()}
        return detection, self.distiller.raw_losses(student_out, teacher_out)

    def nonfinite_sources(self, clear: bool = False) -> List[str]:
        """The features ("student res3", "teacher p4", ...) that went non-finite in a checked
        step so far (one host sync; [] when nothing was checked). ``clear``: start over."""
        report = self._nonfinite
        if clear:
            self._nonfinite = {}
        if not report:
            return []
        flags = torch.stack(list(report.values())).cpu().tolist()
        return [name for name, flag in zip(report, flags) if flag]

    @staticmethod
    def _nonfinite_flags(student_feats, teacher_feats) -> Dict[str, torch.Tensor]:
        """Per position and net, a device flag "went non-finite" (no host sync here).

        Flags accumulate over steps; the assignment hook reads them only when training
        stops, to name the position where a NaN/Inf loss came from.
        """
        flags = {}
        # One reduction per map: a NaN/Inf anywhere makes the sum non-finite (finite features
        # of any sane magnitude cannot overflow float32 when summed).
        for name in student_feats:
            flags[f"student {name}"] = ~torch.isfinite(student_feats[name].detach().sum())
        for name in teacher_feats:
            flags[f"teacher {name}"] = ~torch.isfinite(teacher_feats[name].sum())
        return flags

    # ---------------------------------------------------------------- tracking
    @torch.no_grad()
    def track_batch(self, batched_inputs) -> None:
        """Accumulate matching costs for one batch; both nets must already be in eval mode."""
        batched_inputs = self.upload(batched_inputs)
        teacher_out = self.teacher_pass(batched_inputs)
        images = self.student.preprocess_image(batched_inputs)
        with self.student_taps.capture() as student_feats:
            self.student.backbone(images.tensor)
        self.distiller.track(student_feats, teacher_out.features_for(student_feats))


@register_config_check
def check_student(cfg) -> Iterator[str]:
    """MGD.STUDENT_META_ARCHITECTURE (built by build_student), MGD.CHECK_FINITE_PERIOD and
    MGD.RCNN.*."""
    yield from number_problems(cfg, "MGD.CHECK_FINITE_PERIOD", minimum=0, integer=True, hint=" (0 disables it)")
    yield from number_problems(cfg, "MGD.RCNN.ROIS_PER_IMAGE", minimum=1, integer=True,
                               hint=" (distillation ROIs per image of the ROI_KD / ROI_BOX / MASK_KD pathways)")
    yield from number_problems(cfg, "MGD.RCNN.MASK_ROIS_PER_IMAGE", minimum=1, integer=True,
                               hint=" (the most mask ROIs per image of the MASK_KD pathway)")
    arch = cfg.MGD.STUDENT_META_ARCHITECTURE
    if arch == MGD_META_ARCHITECTURE or not isinstance(arch, str) or not arch:
        yield (f"MGD.STUDENT_META_ARCHITECTURE must name a plain detector, e.g. 'RetinaNet' or "
               f"'GeneralizedRCNN' (got {arch!r})")
        return
    if arch not in META_ARCH_REGISTRY:
        known = sorted(k for k, _ in META_ARCH_REGISTRY if k != MGD_META_ARCHITECTURE)
        yield f"MGD.STUDENT_META_ARCHITECTURE {arch!r} is not a registered meta-architecture ({', '.join(known)})"
