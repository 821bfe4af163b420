"""Checkpoint loading for MGD runs: resume checks, plain-detector fine-tuning, export.

An MGD checkpoint (``DetectionCheckpointer`` format) holds the wrapper's state dict: the
student under ``student.``, the distillation branch under ``distiller.`` and the teacher's
file digest ``teacher_sha256``; the teacher itself is reloaded from its own file. Everything
in it is a tensor or a Python primitive, so ``torch.load(..., weights_only=True)`` reads it.

:class:`MGDCheckpointer` loads

- an MGD checkpoint strictly (missing, unexpected or mis-shaped keys are an error, raised
  *before* any weight is copied), checking that the teacher file is the one the checkpoint
  was trained with;
- a plain detector checkpoint (no ``student.`` keys) into the student only, strictly when it
  is a full detector checkpoint; the distillation branch keeps its fresh values. Files that
  need Detectron2's name-matching heuristics (ImageNet ``.pkl`` backbones) load as Detectron2
  loads them, missing heads included.

Unreadable (e.g. truncated) files raise :class:`CheckpointLoadError` naming the file.
"""
import logging
import random
from typing import Dict

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from mgd_det.modeling.teacher import IncompatibleWeightsError, incompatibility_problems

logger = logging.getLogger(__name__)

STUDENT_PREFIX = "student."
DIGEST_KEY = "teacher_sha256"
# Keys Detectron2 itself tolerates: pixel statistics come from the config, cell anchors
# are non-persistent buffers that old checkpoints still carry.
_TOLERATED_MISSING_SUFFIXES = ("pixel_mean", "pixel_std")
_TOLERATED_UNEXPECTED_PART = "anchor_generator.cell_anchors"


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be read (missing, truncated, corrupt or not a checkpoint)."""


class TeacherChangedError(RuntimeError):
    """Resuming with a teacher file other than the one the checkpoint was trained with."""


def is_mgd_state(state: Dict) -> bool:
    return any(key.startswith(STUDENT_PREFIX) for key in state)


def student_state_dict(state: Dict) -> Dict[str, torch.Tensor]:
    """The student's plain state dict from an MGD state dict (prefix stripped, rest dropped)."""
    if not is_mgd_state(state):
        raise ValueError(
            f"not an MGD checkpoint: no key starts with {STUDENT_PREFIX!r} "
            f"(first keys: {sorted(state)[:5]})"
        )
    n = len(STUDENT_PREFIX)
    return {key[n:]: value for key, value in state.items() if key.startswith(STUDENT_PREFIX)}


def export_student(checkpoint_file: str, output_file: str) -> Dict[str, torch.Tensor]:
    """Write the student of an MGD checkpoint as a plain ``{"model": state_dict}`` file."""
    try:
        data = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointLoadError(f"Cannot read checkpoint {checkpoint_file}: {err}") from err
    state = student_state_dict(data.get("model", data) if isinstance(data, dict) else {})
    foreign = [k for k in state if k.startswith(("distiller.", "_teacher.", DIGEST_KEY, STUDENT_PREFIX))]
    if foreign:  # e.g. a student that itself wraps a distiller
        raise ValueError(f"{checkpoint_file}: the student's state holds foreign keys {foreign[:5]}")
    torch.save({"model": state}, output_file)
    return state


def incompatible_keys(state: Dict, model_state: Dict) -> _IncompatibleKeys:
    """Missing, unexpected and mis-shaped keys of ``state`` against a model's state dict."""
    missing = [
        k for k in model_state
        if k not in state and not k.endswith(_TOLERATED_MISSING_SUFFIXES)
    ]
    unexpected = [k for k in state if k not in model_state and _TOLERATED_UNEXPECTED_PART not in k]
    shapes = [
        (k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in state.items()
        if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    ]
    return _IncompatibleKeys(missing_keys=missing, unexpected_keys=unexpected, incorrect_shapes=shapes)


def raise_if_incompatible(incompatible: _IncompatibleKeys, what: str, filename: str, hint: str):
    problems = incompatibility_problems(incompatible, limit=8)
    if problems:
        raise IncompatibleWeightsError(
            f"Checkpoint {filename} does not fit the {what}: {'; '.join(problems)}. Nothing was "
            f"loaded. {hint}"
        )


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> Dict:
    """The torch, numpy and Python global RNG states, as tensors and primitives only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": float("nan") if py_gauss is None else float(py_gauss)},
    }


def set_rng_state(state: Dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    py = state["python"]
    gauss = None if np.isnan(py["gauss"]) else py["gauss"]
    random.setstate((py["version"], tuple(py["state"].tolist()), gauss))


# ---------------------------------------------------------------------------- module EMAs
# Python attributes (not buffers) that Detectron2 modules update during training, e.g. the
# EMA of the number of foreground anchors that normalises RetinaNet/FCOS losses. They are
# missing from state_dict, so a resumed run would restart them from their initial value.
EMA_ATTRIBUTES = ("loss_normalizer",)


def module_ema_state(model) -> Dict[str, float]:
    """``{"<module>.<attribute>": value}`` for the float EMA attributes set on ``model``."""
    return {
        f"{name}.{attr}" if name else attr: float(getattr(module, attr))
        for name, module in model.named_modules()
        for attr in EMA_ATTRIBUTES
        if isinstance(getattr(module, attr, None), (int, float))
    }


def load_module_ema_state(model, state: Dict[str, float]) -> None:
    modules = dict(model.named_modules())
    for key, value in state.items():
        name, _, attr = key.rpartition(".")
        if name in modules and attr in EMA_ATTRIBUTES:
            setattr(modules[name], attr, float(value))


# ---------------------------------------------------------------------------- checkpointer
class MGDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with MGD-aware, all-or-nothing loading (see the module doc).

    Works for plain detectors too (then only the readable-file check is added).

    Args:
        teacher_weights: the current MGD.TEACHER.WEIGHTS, named in error messages.
    """

    def __init__(self, model, save_dir="", *, teacher_weights: str = "", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.teacher_weights = teacher_weights
        self._resuming = False
        self._filename = ""

    def resume_or_load(self, path: str, *, resume: bool = True):
        self._resuming = resume and self.has_checkpoint()
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def _load_file(self, filename):
        try:
            data = super()._load_file(filename)
        except Exception as err:  # any reader failure: name the file, keep the cause
            raise CheckpointLoadError(
                f"Cannot read checkpoint {filename}: {type(err).__name__}: {err}. The file is "
                "truncated or corrupt (e.g. the run was killed while saving) or not a checkpoint. "
                "Delete it; to resume from an earlier checkpoint, write that file's name into "
                "last_checkpoint in the output directory."
            ) from err
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CheckpointLoadError(f"Checkpoint {filename} holds no 'model' state dict.")
        self._filename = filename
        return data

    def _load_model(self, checkpoint):
        from mgd_det.modeling.meta_arch import MGDDistiller

        if not isinstance(self.model, MGDDistiller):
            return super()._load_model(checkpoint)
        state = checkpoint["model"]
        for key in [k for k in state if k.startswith("module.")]:  # saved from a DDP model
            state[key[len("module."):]] = state.pop(key)
        if not is_mgd_state(state):
            return self._load_plain_into_student(checkpoint)
        raise_if_incompatible(
            incompatible_keys(state, self.model.state_dict()),
            "MGD model (student and distillation branch)",
            self._filename,
            "It was saved by a run with another student architecture, other MGD.POSITIONS or "
            "another teacher width. To start from its student anyway, export the student with "
            "tools/export_student.py and use that file as MODEL.WEIGHTS.",
        )
        teacher_changed = self._teacher_changed(state.get(DIGEST_KEY))
        current_digest = self.model.teacher_sha256.clone()
        incompatible = super()._load_model(checkpoint)
        if teacher_changed:  # fine-tuning from an MGD checkpoint with a new teacher
            self.model.teacher_sha256.copy_(current_digest)
            self.model.distiller.assigned.fill_(False)  # re-solve against the new teacher
        return incompatible

    def _load_plain_into_student(self, checkpoint):
        student = self.model.student
        if not checkpoint.get("matching_heuristics", False):
            raise_if_incompatible(
                incompatible_keys(checkpoint["model"], student.state_dict()),
                "student",
                self._filename,
                "A plain detector checkpoint given as MODEL.WEIGHTS must come from the same "
                "architecture as the student (cfg.MODEL: depth, FPN, heads, classes).",
            )
        logger.info("Loading a plain detector checkpoint %s into the MGD student", self._filename)
        loader = DetectionCheckpointer(student, save_to_disk=False)
        incompatible = loader._load_model(checkpoint)
        return _IncompatibleKeys(
            missing_keys=[STUDENT_PREFIX + k for k in incompatible.missing_keys],
            unexpected_keys=[STUDENT_PREFIX + k for k in incompatible.unexpected_keys],
            incorrect_shapes=[(STUDENT_PREFIX + k, a, b) for k, a, b in incompatible.incorrect_shapes],
        )

    def _teacher_changed(self, saved) -> bool:
        """Compare the checkpoint's teacher digest with the current teacher file's.

        The current digest was computed from MGD.TEACHER.WEIGHTS when the model was built,
        i.e. before this load overwrites the buffer. All-zero digests mean "unknown".
        """
        current = self.model.teacher_sha256
        if saved is None or not saved.any() or not current.any() or torch.equal(saved.to(current), current):
            return False
        saved_hex, current_hex = bytes(saved.tolist()).hex(), self.model.teacher_digest()
        if self._resuming:
            raise TeacherChangedError(
                f"Cannot resume from {self._filename}: it was trained with a teacher whose weights "
                f"file has SHA-256 {saved_hex}, but the current teacher file "
                f"{self.teacher_weights or '(MGD.TEACHER.WEIGHTS)'} has SHA-256 {current_hex}. "
                "The teacher changed since the run started. Restore the original teacher file, "
                "or start a new run in a fresh OUTPUT_DIR with MODEL.WEIGHTS pointing at this "
                "checkpoint (without --resume) to distil from the new teacher."
            )
        logger.warning(
            "Checkpoint %s was trained with another teacher (SHA-256 %s, now %s): keeping its "
            "student and distillation branch, recomputing the assignments for the new teacher.",
            self._filename, saved_hex, current_hex,
        )
        return True
