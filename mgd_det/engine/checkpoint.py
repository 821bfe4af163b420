"""Checkpoint saving and loading for MGD runs: atomic saves, resume checks, export.

An MGD checkpoint (``DetectionCheckpointer`` format) holds the wrapper's state dict: the
student under ``student.``, the distillation state under ``distiller.`` and the teacher's
file digest ``teacher_sha256`` (the teacher itself is reloaded from its own file), plus
``mgd_settings``: the MGD config values the distillation state depends on. Everything in it
is a tensor or a Python primitive, so ``torch.load(..., weights_only=True)`` reads it.

:class:`MGDCheckpointer`

- saves atomically (temporary file, fsync, rename; ``last_checkpoint`` the same way): a
  killed process, a full disk or a file-size limit leaves the previous checkpoint and
  ``last_checkpoint`` intact, and a failed save names the file and the cause;
- on ``--resume`` without ``last_checkpoint`` but with checkpoint files, resumes from the
  newest readable one and says so (WARNING); with nothing usable it says so too;
- loads an MGD checkpoint strictly (missing, unexpected or mis-shaped keys are an error,
  raised *before* any weight is copied), checking that the teacher file is the one the
  checkpoint was trained with and, on resume, that the MGD settings are (a changed
  MGD.REDUCER or pathway list is named as such);
- loads a plain detector checkpoint (no ``student.`` keys) into the student only, strictly
  when it is a full detector checkpoint; the distillation branch keeps its fresh values
  (but refuses it on resume: the run in OUTPUT_DIR is not this MGD run). Files that need
  Detectron2's name-matching heuristics (ImageNet ``.pkl`` backbones) load as Detectron2
  loads them, missing heads included.

Unreadable files raise :class:`CheckpointLoadError` naming the file; a valid file refused by
torch's ``weights_only`` is not called corrupt (:class:`UnsafeCheckpointError`). The error
types and their texts are in :mod:`mgd_det.engine.checkpoint_errors`, the recorded MGD
settings in :mod:`mgd_det.engine.resume_settings`, the RNG / module-EMA snapshots of the
trainer's state in :mod:`mgd_det.engine.snapshots`.
"""
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from mgd_det.atomic_io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from mgd_det.engine import checkpoint_errors as errors
from mgd_det.engine.checkpoint_errors import LAST_CHECKPOINT, CheckpointLoadError, UnsafeCheckpointError
from mgd_det.engine.resume_settings import SETTINGS_KEY, changed_settings
from mgd_det.errors import CheckpointError
from mgd_det.modeling.checkpoint_files import DIGEST_KEY, STUDENT_PREFIX, is_mgd_state, load_failure
from mgd_det.modeling.teacher import IncompatibleWeightsError, incompatibility_problems

logger = logging.getLogger(__name__)

# Keys Detectron2 itself tolerates: pixel statistics come from the config, cell anchors
# are non-persistent buffers that old checkpoints still carry.
_TOLERATED_MISSING_SUFFIXES = ("pixel_mean", "pixel_std")
_TOLERATED_UNEXPECTED_PART = "anchor_generator.cell_anchors"
# Detectron2's periodic checkpoints: model_0000199.pth ... model_final.pth.
_RUN_CHECKPOINT = re.compile(r"^model_(\d+|final)\.pth$")

def student_state_dict(state: Dict) -> Dict[str, torch.Tensor]:
    """The student's plain state dict from an MGD state dict (prefix stripped, rest dropped)."""
    if not is_mgd_state(state):
        example = f", e.g. {sorted(state)[0]!r}" if state else ""
        raise CheckpointError(
            f"not an MGD checkpoint: none of its {len(state)} keys starts with {STUDENT_PREFIX!r}"
            f"{example}; it is already a plain checkpoint: use it as it is"
        )
    n = len(STUDENT_PREFIX)
    return {key[n:]: value for key, value in state.items() if key.startswith(STUDENT_PREFIX)}


def read_student_state(checkpoint_file: str) -> Dict[str, torch.Tensor]:
    """The student's plain state dict of an MGD checkpoint file."""
    try:
        data = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise load_failure(checkpoint_file, err) from err
    try:
        state = student_state_dict(data.get("model", data) if isinstance(data, dict) else {})
    except CheckpointError as err:
        raise CheckpointError(f"{checkpoint_file}: {err}", path=checkpoint_file) from None
    foreign = [k for k in state if k.startswith(("distiller.", "_teacher.", DIGEST_KEY, STUDENT_PREFIX))]
    if foreign:  # e.g. a student that itself wraps a distiller
        raise CheckpointError(f"{checkpoint_file}: the student's state holds foreign keys {foreign[:5]}",
                              path=checkpoint_file)
    return state


def export_student(checkpoint_file: str, output_file: str) -> Dict[str, torch.Tensor]:
    """Write the student of an MGD checkpoint as a plain ``{"model": state_dict}`` file
    (atomically)."""
    state = read_student_state(checkpoint_file)
    atomic_torch_save({"model": state}, output_file)
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
    problems = incompatibility_problems(incompatible)
    if problems:
        raise IncompatibleWeightsError(
            f"Checkpoint {filename} does not fit the {what}: {'; '.join(problems)}. Nothing was "
            f"loaded. {hint}"
        )


# ---------------------------------------------------------------------------- checkpointer
def _split(incompatible: _IncompatibleKeys, student: bool) -> _IncompatibleKeys:
    """The student part (``student.`` keys) or the rest (the distillation state)."""
    keep = (lambda k: k.startswith(STUDENT_PREFIX)) if student else (lambda k: not k.startswith(STUDENT_PREFIX))
    return _IncompatibleKeys(
        missing_keys=[k for k in incompatible.missing_keys if keep(k)],
        unexpected_keys=[k for k in incompatible.unexpected_keys if keep(k)],
        incorrect_shapes=[t for t in incompatible.incorrect_shapes if keep(t[0])],
    )


def _checkpoint_order(name: str) -> Tuple[int, int]:
    match = _RUN_CHECKPOINT.match(name)
    if not match:
        return (-1, 0)
    return (1, 0) if match.group(1) == "final" else (0, int(match.group(1)))


class MGDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves and MGD-aware, all-or-nothing loading (see
    the module doc). Works for plain detectors too.

    Args:
        teacher_weights: the current MGD.TEACHER.WEIGHTS, named in error messages.
        settings: :func:`~mgd_det.engine.resume_settings.mgd_settings` of the run's config
            (saved, and compared on resume).
    """

    def __init__(self, model, save_dir="", *, teacher_weights: str = "", settings: Optional[Dict] = None,
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.teacher_weights = teacher_weights
        self.settings = settings
        self._resuming = False
        self._filename = ""
        self._probed: Optional[Tuple[str, Dict]] = None
        # The file the last resume_or_load resumed from ("" if it did not resume).
        self.resumed_from = ""
        if self.save_to_disk and self._local_dir() and os.path.isdir(self.save_dir):
            remove_stale_temporaries(self.save_dir)

    def _local_dir(self) -> bool:
        return bool(self.save_dir) and "://" not in self.save_dir

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs) -> None:
        """Like fvcore's ``save``, written atomically; a failure names the file and the cause."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local_dir():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.settings is not None:
            data[SETTINGS_KEY] = dict(self.settings)
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s", save_file)
        try:
            os.makedirs(self.save_dir, exist_ok=True)
            atomic_torch_save(data, save_file)
        except KeyboardInterrupt as interrupt:  # Ctrl-C: said as such (engine/cli.py prints the note)
            interrupt.add_note(errors.save_interrupted(save_file, self._previous_checkpoint()))
            raise
        except Exception as err:
            raise self._save_error(save_file, err) from err
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local_dir():
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        try:
            atomic_write_text(save_file, last_filename_basename)
        except KeyboardInterrupt as interrupt:
            interrupt.add_note(errors.save_interrupted(save_file, self._previous_checkpoint()))
            raise
        except Exception as err:
            raise self._save_error(save_file, err) from err

    def _previous_checkpoint(self) -> str:
        """The run's last complete checkpoint ("" when there is none)."""
        return self.get_checkpoint_file() if self.has_checkpoint() else ""

    def _save_error(self, save_file: str, err: BaseException) -> errors.CheckpointSaveError:
        return errors.save_failed(save_file, err, self._previous_checkpoint())

    # ------------------------------------------------------------------ loading
    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise errors.weights_not_found(path, self.save_dir)
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None  # Detectron2 leaves it set after an error
            self._probed = None

    def resume_or_load(self, path: str, *, resume: bool = True):
        """Resume from the run in ``save_dir`` (``resume`` and a usable checkpoint there), else
        load ``path`` (MODEL.WEIGHTS) without the trainer state. :attr:`resumed_from` tells which."""
        self.resumed_from = ""
        target = self._resume_target() if resume else None
        self._resuming = target is not None
        try:
            if target is None:
                return self.load(path, checkpointables=[])
            result = self.load(target)
            self.resumed_from = target
            return result
        finally:
            self._resuming = False

    def _candidates(self) -> List[str]:
        if not os.path.isdir(self.save_dir):
            return []
        names = [n for n in os.listdir(self.save_dir) if _RUN_CHECKPOINT.match(n)]
        return sorted(names, key=_checkpoint_order, reverse=True)

    def _resume_target(self) -> Optional[str]:
        """The file ``--resume`` continues from: the one ``last_checkpoint`` names; else (it is
        missing or names a missing file) the newest readable checkpoint of the folder, loudly;
        None when there is none (also said loudly when the folder had checkpoint files)."""
        if not self._local_dir():
            return self.get_checkpoint_file() if self.has_checkpoint() else None
        last_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if self.has_checkpoint():
            named = self.get_checkpoint_file()
            if os.path.isfile(named):
                return named
            reason = f"{last_file} names {named}, which does not exist"
        else:
            reason = f"{last_file} does not exist"
        candidates = self._candidates()
        if not candidates:
            if os.path.isfile(last_file):
                logger.warning("--resume: %s and no checkpoint is left in %s: starting a new run "
                               "from MODEL.WEIGHTS at iteration 0.", reason, self.save_dir)
            return None
        skipped = []
        for name in candidates:
            path = os.path.join(self.save_dir, name)
            try:
                data = self._read(path, probe=True)
            except UnsafeCheckpointError:
                raise
            except CheckpointLoadError as err:
                cause = err.__cause__
                skipped.append(f"{name} ({type(cause).__name__ if cause else 'unreadable'})")
                continue
            self._probed = (path, data)
            logger.warning(
                "--resume: %s; resuming from the newest readable checkpoint %s%s.",
                reason, path, f", skipping unreadable {', '.join(skipped)}" if skipped else "",
            )
            if self.save_to_disk:
                self.tag_last_checkpoint(name)
            return path
        logger.warning(
            "--resume: %s and no checkpoint in %s is readable (%s): starting a new run from "
            "MODEL.WEIGHTS at iteration 0; the unreadable files will be overwritten as the run "
            "saves.", reason, self.save_dir, ", ".join(skipped),
        )
        return None

    def _read(self, filename, probe: bool = False):
        """The file's content, with a clear error if unreadable. ``probe``: outside ``load``
        (Detectron2's reader insists on running inside it), for run checkpoints (.pth)."""
        if self._probed is not None and self._probed[0] == filename:
            return self._probed[1]
        try:
            data = self._torch_load(filename) if probe else super()._load_file(filename)
            if probe and isinstance(data, dict) and "model" not in data:
                data = {"model": data}
        except Exception as err:  # any reader failure: name the file, say what it is
            raise load_failure(filename, err) from err
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CheckpointLoadError(f"checkpoint {filename} holds no 'model' state dict: it is not a "
                                      "Detectron2 checkpoint", path=filename)
        return data

    def _load_file(self, filename):
        data = self._read(filename)
        self._filename = filename
        return data

    def _load_model(self, checkpoint):
        from mgd_det.modeling.meta_arch import MGDDistiller

        state = checkpoint["model"]
        if not isinstance(self.model, MGDDistiller):
            if is_mgd_state(state):
                raise errors.mgd_checkpoint_for_plain_model(self._filename)
            return super()._load_model(checkpoint)
        for key in [k for k in state if k.startswith("module.")]:  # saved from a DDP model
            state[key[len("module."):]] = state.pop(key)
        if not is_mgd_state(state):
            if self._resuming:
                raise errors.plain_checkpoint_on_mgd_resume(self._filename)
            return self._load_plain_into_student(checkpoint)
        if self._resuming:
            self._check_settings(checkpoint.get(SETTINGS_KEY))
        incompatible = incompatible_keys(state, self.model.state_dict())
        raise_if_incompatible(
            _split(incompatible, student=True),
            "MGD model (student and distillation branch)",
            self._filename,
            "It was saved by a run with another student architecture. To start from its student "
            "anyway, export the student with tools/export_student.py and use that file as MODEL.WEIGHTS.",
        )
        distill_problems = incompatibility_problems(_split(incompatible, student=False))
        if distill_problems:
            if self._resuming:
                raise errors.distillation_state_mismatch(self._filename, distill_problems, self.save_dir)
            logger.warning(
                "Checkpoint %s was trained with other MGD settings (distillation state: %s): loading "
                "its student only; the distillation branch starts fresh.", self._filename, "; ".join(distill_problems),
            )
            return self._load_student_of_mgd(checkpoint)
        teacher_changed = self._teacher_changed(state.get(DIGEST_KEY))
        current_digest = self.model.teacher_sha256.clone()
        incompatible = super()._load_model(checkpoint)
        if teacher_changed:  # fine-tuning from an MGD checkpoint with a new teacher
            self.model.teacher_sha256.copy_(current_digest)
            self.model.distiller.assigned.fill_(False)  # re-solve against the new teacher
        return incompatible

    def _check_settings(self, saved: Optional[Dict]) -> None:
        """Name the MGD settings that changed since the checkpoint was written."""
        if not saved or self.settings is None:
            return
        fixed, changed = changed_settings(saved, self.settings)
        if fixed:
            raise errors.fixed_settings_changed(self._filename, fixed)
        if changed:
            logger.warning("Resuming with changed settings: %s",
                           ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed))

    def _load_student_of_mgd(self, checkpoint):
        student_only = dict(checkpoint)
        student_only["model"] = student_state_dict(checkpoint["model"])
        return self._load_plain_into_student(student_only)

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
            raise errors.teacher_changed(self._filename, saved_hex, current_hex, self.teacher_weights)
        logger.warning(
            "Checkpoint %s was trained with another teacher (SHA-256 %s, now %s): keeping its "
            "student and distillation branch, recomputing the assignments for the new teacher.",
            self._filename, saved_hex, current_hex,
        )
        return True
