"""What goes wrong with run checkpoints, in words: the error types of
:mod:`mgd_det.engine.checkpoint` and the messages that name the file, the cause and the fix.

Each function returns the error to raise; the checkpointer decides when.
"""
import os
from typing import Sequence

from mgd_det.errors import CheckpointError
from mgd_det.modeling.checkpoint_files import CheckpointLoadError, UnsafeCheckpointError  # noqa: F401  (re-exported)

LAST_CHECKPOINT = "last_checkpoint"


class TeacherChangedError(CheckpointError):
    """Resuming with a teacher file other than the one the checkpoint was trained with."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (the previous one is intact)."""


class ResumeMismatchError(CheckpointError):
    """The checkpoint to resume from belongs to another kind of run or other MGD settings."""


def save_failed(save_file: str, err: BaseException, previous: str) -> CheckpointSaveError:
    """``previous``: the run's last good checkpoint ("" when there is none)."""
    kept = (f"the previous checkpoint {previous} and {LAST_CHECKPOINT} are intact" if previous
            else "no earlier checkpoint of this run exists")
    cause = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return CheckpointSaveError(
        f"could not save checkpoint {save_file} ({cause}); {kept}: free disk space (or raise "
        "the file-size limit, or choose another OUTPUT_DIR) and continue with --resume",
        path=save_file,
    )


def save_interrupted(save_file: str, previous: str) -> str:
    """The line for a Ctrl-C (SIGINT) during a save: nothing is wrong with the disk."""
    kept = (f"the last complete checkpoint {previous} and {LAST_CHECKPOINT} are intact" if previous
            else "no earlier checkpoint of this run exists")
    return (f"interrupted (Ctrl-C) while saving checkpoint {save_file}: the partial file was removed and "
            f"{kept}: continue with --resume")


def weights_not_found(path: str, save_dir: str) -> CheckpointLoadError:
    return CheckpointLoadError(
        f"checkpoint {path} not found (MODEL.WEIGHTS, or the {LAST_CHECKPOINT} file of "
        f"{save_dir or 'OUTPUT_DIR'}): check the path, or leave MODEL.WEIGHTS empty to "
        "start from scratch", path=path,
    )


def mgd_checkpoint_for_plain_model(filename: str) -> ResumeMismatchError:
    return ResumeMismatchError(
        f"checkpoint {filename} is an MGD checkpoint (a student with its distillation "
        "state) but this config builds a plain detector: use the MGD config it was trained "
        f"with, or export its student (python tools/export_student.py {filename} "
        "student.pth) and load that", path=filename,
    )


def plain_checkpoint_on_mgd_resume(filename: str) -> ResumeMismatchError:
    return ResumeMismatchError(
        f"cannot resume this MGD run from {filename}: it is a plain detector checkpoint "
        "(no 'student.' keys), e.g. written by a plain run into the same OUTPUT_DIR: start the "
        f"MGD run in a fresh OUTPUT_DIR, with MODEL.WEIGHTS {filename} (no --resume) to "
        "start from this detector", path=filename,
    )


def distillation_state_mismatch(filename: str, problems: Sequence[str], save_dir: str) -> ResumeMismatchError:
    return ResumeMismatchError(
        f"checkpoint {filename} was trained with a different MGD.REDUCER / pathways "
        "(MGD.POSITIONS, MGD.PATHWAYS, MGD.STUDENT_NORM): its distillation state does not fit "
        f"({'; '.join(problems)}). Nothing was loaded: resume with the settings it "
        f"was trained with (see {os.path.join(save_dir, 'config.yaml')}), or start a "
        f"fresh OUTPUT_DIR with MODEL.WEIGHTS {filename} to continue with the new ones",
        path=filename,
    )


def fixed_settings_changed(filename: str, changes: Sequence) -> ResumeMismatchError:
    """``changes``: (key, saved value, current value) of the fixed settings that differ."""
    listed = ", ".join(f"{k} {a!r} (now {b!r})" for k, a, b in changes)
    return ResumeMismatchError(
        f"checkpoint {filename} was trained with {listed}: resume with the settings it was "
        "trained with, or start a fresh OUTPUT_DIR with MODEL.WEIGHTS "
        f"{filename} (no --resume) to continue with the new ones", path=filename,
    )


def teacher_changed(filename: str, saved_hex: str, current_hex: str, teacher_weights: str) -> TeacherChangedError:
    return TeacherChangedError(
        f"Cannot resume from {filename}: it was trained with a teacher whose weights "
        f"file has SHA-256 {saved_hex}, but the current teacher file "
        f"{teacher_weights or '(MGD.TEACHER.WEIGHTS)'} has SHA-256 {current_hex}. "
        "The teacher changed since the run started. Restore the original teacher file, "
        "or start a new run in a fresh OUTPUT_DIR with MODEL.WEIGHTS pointing at this "
        "checkpoint (without --resume) to distil from the new teacher."
    )
