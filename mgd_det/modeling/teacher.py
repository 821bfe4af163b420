"""Build the frozen teacher detector from its own config and load its weights strictly.

The teacher's config is its plain Detectron2 config file, with the student's number of
classes (students and teacher see the same data) and then ``MGD.TEACHER.OVERRIDES``.
Its weights load all-or-nothing with the same error handling as the student's checkpoints
(file named, key lists capped, an MGD checkpoint recognised); a missing weights file is
answered with the exact command that trains the teacher.
"""
import hashlib
import logging
import os
import shlex
from typing import List, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from mgd_det.cfg_facts import MGD_META_ARCHITECTURE, get_key
from mgd_det.config import get_mgd_cfg
from mgd_det.config_checks import register_config_check
from mgd_det.config_paths import merge_config
from mgd_det.errors import CheckpointError, ConfigError, UserFileNotFoundError

from .checkpoint_files import incompatibility_problems, is_mgd_state, load_failure

logger = logging.getLogger(__name__)

__all__ = [
    "IncompatibleWeightsError",
    "StrictCheckpointer",
    "build_teacher",
    "build_teacher_cfg",
    "file_sha256",
    "incompatibility_problems",
    "teacher_training_command",
]

# Class-count keys by meta-architecture: the head a detector actually uses.
CLASS_COUNT_KEYS = {"RetinaNet": "MODEL.RETINANET.NUM_CLASSES", "BatchedRetinaNet": "MODEL.RETINANET.NUM_CLASSES",
                    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES"}
# Classification layers whose first dimension follows the class count (RetinaNet: anchors x
# classes; R-CNN box predictor: classes + background).
_CLASS_LAYERS = {"head.cls_score.weight": "MODEL.RETINANET.NUM_CLASSES",
                 "roi_heads.box_predictor.cls_score.weight": "MODEL.ROI_HEADS.NUM_CLASSES"}


class IncompatibleWeightsError(CheckpointError):
    """A checkpoint does not fit the model it is loaded into."""


def _class_count_hint(incompatible, cfg: Optional[CfgNode]) -> str:
    """If a classification layer's shape differs, the class count the file was trained with."""
    for name, file_shape, model_shape in incompatible.incorrect_shapes:
        key = _CLASS_LAYERS.get(name)
        if key is None or cfg is None or not file_shape or not model_shape:
            continue
        current = get_key(cfg, key)
        if key.endswith("RETINANET.NUM_CLASSES"):
            trained = file_shape[0] * current // model_shape[0]
        else:
            trained = file_shape[0] - 1
        return (f" The file was trained with {trained} classes, the teacher is built with {current} "
                f"(the student's count): if that is intended, set MGD.TEACHER.OVERRIDES "
                f"\"['{key}', '{trained}']\"; otherwise train the teacher on the student's data.")
    return ""


class StrictCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that refuses missing, unexpected or mis-shaped keys.

    fvcore only logs such keys; for a teacher that silently means distilling from random
    layers, so here they are an error (or, if allowed, a loud warning).

    Args:
        what: how the model is named in messages ("Teacher").
        allow_partial: MGD.TEACHER.ALLOW_PARTIAL_LOAD.
        cfg: the model's config, for the class-count hint.
    """

    def __init__(self, model: nn.Module, what: str, allow_partial: bool = False, cfg: Optional[CfgNode] = None):
        super().__init__(model, save_to_disk=False)
        self.what = what
        self.allow_partial = allow_partial
        self.cfg = cfg
        self._filename = ""

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None  # Detectron2 leaves it set after an error

    def _load_file(self, filename):
        try:
            data = super()._load_file(filename)
        except Exception as err:  # any reader failure: name the file, say what it is
            raise load_failure(filename, err, what=f"{self.what.lower()} weights") from err
        self._filename = filename
        state = data.get("model") if isinstance(data, dict) else None
        if isinstance(state, dict) and is_mgd_state(state):
            raise CheckpointError(
                f"{self.what.lower()} weights {filename} are an MGD checkpoint (a distilled student with its "
                "distillation state), not a plain detector: export the student with python "
                f"tools/export_student.py {filename} student.pth and use that file, or point "
                "MGD.TEACHER.WEIGHTS at the teacher that run distilled from", path=filename,
            )
        return data

    def _log_incompatible_keys(self, incompatible) -> None:
        problems = incompatibility_problems(incompatible)
        if not problems:
            return
        message = f"{self.what} weights do not match its config ({self._filename}): " + "; ".join(problems)
        if self.allow_partial:
            logger.warning("PARTIAL LOAD (allowed by MGD.TEACHER.ALLOW_PARTIAL_LOAD) — %s", message)
            return
        hint = _class_count_hint(incompatible, self.cfg)
        raise IncompatibleWeightsError(
            message + ". Check that the weights were trained with this config (architecture, depth, "
            "number of classes; MGD.TEACHER.CONFIG_FILE and MGD.TEACHER.OVERRIDES)." + hint
            + " Loading them partially (MGD.TEACHER.ALLOW_PARTIAL_LOAD True) would distil from "
            "randomly initialised layers."
        )


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _student_class_count(cfg: CfgNode) -> Tuple[Optional[str], Optional[int]]:
    key = CLASS_COUNT_KEYS.get(cfg.MGD.STUDENT_META_ARCHITECTURE)
    return (key, get_key(cfg, key)) if key else (None, None)


def _teacher_file_cfg(cfg: CfgNode) -> CfgNode:
    """The teacher's config file alone (no overrides), with the MGD keys declared."""
    config_file = cfg.MGD.TEACHER.CONFIG_FILE
    if not config_file:
        raise ConfigError(
            "MGD.TEACHER.CONFIG_FILE is empty: set it to the teacher's plain Detectron2 config "
            "(e.g. configs/mini_digits/retinanet_R50_FPN.yaml)", key="MGD.TEACHER.CONFIG_FILE",
        )
    if not os.path.isfile(config_file):
        raise UserFileNotFoundError(
            f"Teacher config file not found: {config_file} (MGD.TEACHER.CONFIG_FILE): a relative "
            "path is read from the folder of the config file that sets it", path=config_file,
        )
    teacher_cfg = get_mgd_cfg()
    merge_config(teacher_cfg, config_file)
    return teacher_cfg


def _teacher_opts(cfg: CfgNode, teacher_cfg: CfgNode) -> List[str]:
    """KEY VALUE options turning the teacher's file config into the teacher: the student's
    class count (where it differs), then MGD.TEACHER.OVERRIDES."""
    opts: List[str] = []
    _, classes = _student_class_count(cfg)
    teacher_key = CLASS_COUNT_KEYS.get(teacher_cfg.MODEL.META_ARCHITECTURE)
    if classes is not None and teacher_key and get_key(teacher_cfg, teacher_key) != classes:
        opts += [teacher_key, str(classes)]
    return opts + [str(v) for v in cfg.MGD.TEACHER.OVERRIDES]


def build_teacher_cfg(cfg: CfgNode) -> CfgNode:
    """The teacher's plain Detectron2 config: its file, the student's number of classes and test
    sizes (unless MGD.TEACHER.OVERRIDES sets them), then MGD.TEACHER.OVERRIDES.

    The teacher sees the student's images — in distillation, when it scores an unlabeled pool
    and under ``--eval-teacher`` — so its test size is the student's, not the one its own file
    names: a 64² student's pool scored at a teacher file's 128 is ranked on 2× upscaled images
    (the CPU study's LF_pool rows, docs/results/study/PROTOCOL.md).
    """
    teacher_cfg = _teacher_file_cfg(cfg)
    teacher_cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MIN_SIZE_TEST
    teacher_cfg.INPUT.MAX_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST
    config_file = cfg.MGD.TEACHER.CONFIG_FILE
    if teacher_cfg.MODEL.META_ARCHITECTURE == MGD_META_ARCHITECTURE:
        raise ConfigError(
            f"teacher config {config_file} is itself an MGD distiller (MGD.TEACHER.CONFIG_FILE): "
            "give the teacher's plain detector config", key="MGD.TEACHER.CONFIG_FILE",
        )
    opts = _teacher_opts(cfg, teacher_cfg)
    try:
        teacher_cfg.merge_from_list(opts)
    except Exception as err:  # noqa: BLE001 -- yacs: KeyError / ValueError / AssertionError
        raise ConfigError(f"MGD.TEACHER.OVERRIDES {list(cfg.MGD.TEACHER.OVERRIDES)} cannot be applied to "
                          f"{config_file}: {err}", key="MGD.TEACHER.OVERRIDES") from err
    if opts[:1] and opts[0] in CLASS_COUNT_KEYS.values() and opts[0] not in cfg.MGD.TEACHER.OVERRIDES[0::2]:
        logger.info("Teacher takes the student's class count: %s %s", opts[0], opts[1])
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = ""
    teacher_cfg.freeze()
    return teacher_cfg


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith("..") else rel


def teacher_training_command(cfg: CfgNode) -> str:
    """The command that trains the teacher and writes MGD.TEACHER.WEIGHTS (when the path is
    a run's model_final.pth; otherwise the command plus where to copy its result)."""
    weights = cfg.MGD.TEACHER.WEIGHTS
    try:
        teacher_cfg = _teacher_file_cfg(cfg)
    except Exception:  # noqa: BLE001 -- the config error is reported elsewhere
        teacher_cfg = None
    if teacher_cfg is None:
        opts, output_dir = [str(v) for v in cfg.MGD.TEACHER.OVERRIDES], None
    else:
        opts, output_dir = _teacher_opts(cfg, teacher_cfg), teacher_cfg.OUTPUT_DIR
        for key in ("DATASETS.COCO_SETS", "DATASETS.TRAIN"):  # the student's own data, if any
            value = tuple(get_key(cfg, key))
            if value and tuple(get_key(teacher_cfg, key)) != value:
                opts += [key, str(value)]
    copy_note = ""
    if os.path.basename(weights) == "model_final.pth":
        wanted = os.path.dirname(weights)
        if output_dir is None or os.path.normpath(os.path.abspath(output_dir)) != os.path.normpath(os.path.abspath(wanted)):
            opts += ["OUTPUT_DIR", _display_path(wanted) or "."]
    else:
        copy_note = f", then copy its OUTPUT_DIR/model_final.pth to {weights}"
    command = ["python", "tools/train_net.py", "--config-file", _display_path(cfg.MGD.TEACHER.CONFIG_FILE)] + opts
    return " ".join(_quote(part) for part in command) + copy_note


def _quote(part: str) -> str:
    """Shell quoting that keeps Python literals readable: "('a',)" rather than '('"'"'a'"'"',)'."""
    if part == shlex.quote(part):
        return part
    if not any(c in part for c in '"$`\\!'):
        return f'"{part}"'
    return shlex.quote(part)


def build_teacher(cfg: CfgNode, load_weights: bool = True, teacher_cfg: CfgNode = None) -> nn.Module:
    """The teacher detector, weights loaded strictly, frozen and in eval mode.

    ``teacher_cfg`` (from :func:`build_teacher_cfg`) saves re-reading the teacher's config.
    """
    teacher_cfg = teacher_cfg if teacher_cfg is not None else build_teacher_cfg(cfg)
    weights = cfg.MGD.TEACHER.WEIGHTS
    if load_weights:
        if not weights:
            raise ConfigError(
                "MGD.TEACHER.WEIGHTS is empty: the teacher must be a trained detector; train it "
                f"with {teacher_training_command(cfg)} and set MGD.TEACHER.WEIGHTS to its "
                "model_final.pth", key="MGD.TEACHER.WEIGHTS",
            )
        if not os.path.isfile(weights):
            raise UserFileNotFoundError(
                f"Teacher weights not found: {weights} (MGD.TEACHER.WEIGHTS): train the teacher "
                f"first: {teacher_training_command(cfg)}", key="MGD.TEACHER.WEIGHTS", path=weights,
            )
    teacher = build_model(teacher_cfg)
    if load_weights:
        StrictCheckpointer(teacher, "Teacher", cfg.MGD.TEACHER.ALLOW_PARTIAL_LOAD, cfg=teacher_cfg).load(weights)
        logger.info("Loaded teacher weights from %s", weights)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


# ----------------------------------------------------------- checks of MGD.TEACHER.*
@register_config_check
def check_teacher_config_file(cfg: CfgNode):
    path = cfg.MGD.TEACHER.CONFIG_FILE
    if not path:
        yield ("MGD.TEACHER.CONFIG_FILE is empty: set it to the teacher's plain Detectron2 config, "
               "e.g. configs/mini_digits/retinanet_R50_FPN.yaml")
    elif not os.path.isfile(path):
        yield (f"MGD.TEACHER.CONFIG_FILE {path} not found (a relative path is read from the folder "
               "of the config file that sets it, or from the working directory on the command line)")


@register_config_check
def check_teacher_weights_key(cfg: CfgNode):
    if not cfg.MGD.TEACHER.WEIGHTS:
        yield ("MGD.TEACHER.WEIGHTS is empty: set it to the trained teacher's checkpoint "
               "(e.g. its run's model_final.pth)")


@register_config_check
def check_teacher_overrides(cfg: CfgNode):
    overrides = list(cfg.MGD.TEACHER.OVERRIDES)
    if len(overrides) % 2:
        yield (f"MGD.TEACHER.OVERRIDES must alternate KEY and VALUE (got {len(overrides)} items: "
               f"{overrides}), e.g. ['MODEL.RETINANET.NUM_CLASSES', '3']")
        return
    keys = overrides[0::2]
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        yield f"MGD.TEACHER.OVERRIDES keys must be strings (got {bad})"
        return
    probe = get_mgd_cfg()
    for key, value in zip(keys, overrides[1::2]):
        try:
            get_key(probe, key)
        except (KeyError, AttributeError):
            yield f"MGD.TEACHER.OVERRIDES: unknown key {key!r} (check its spelling)"
            continue
        try:
            probe.merge_from_list([key, value])
        except Exception as err:  # noqa: BLE001 -- yacs: ValueError/AssertionError/KeyError
            yield f"MGD.TEACHER.OVERRIDES: bad value {value!r} for {key}: {err}"


# Channel orders the model converts between (meta_arch.teacher_needs_channel_flip).
CONVERTIBLE_FORMATS = {"RGB", "BGR"}


@register_config_check
def check_teacher_input_format(cfg: CfgNode):
    """The student's INPUT.FORMAT is the teacher's, or its RGB<->BGR swap (the only
    conversion the model makes: both nets read the same decoded images)."""
    try:
        teacher_cfg = build_teacher_cfg(cfg)
    except Exception:  # noqa: BLE001 -- a bad teacher config file or override: reported by the checks above
        return
    student, teacher = cfg.INPUT.FORMAT, teacher_cfg.INPUT.FORMAT
    if student != teacher and {student, teacher} != CONVERTIBLE_FORMATS:
        yield (f"INPUT.FORMAT {student!r} (the student's) and the teacher's INPUT.FORMAT {teacher!r} (from "
               f"MGD.TEACHER.CONFIG_FILE {cfg.MGD.TEACHER.CONFIG_FILE} and MGD.TEACHER.OVERRIDES) differ, and only "
               f"RGB<->BGR is converted: set INPUT.FORMAT {teacher!r} for the student, or distil from a teacher "
               f"trained on {student!r}")
