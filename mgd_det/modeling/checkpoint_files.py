"""Reading checkpoint files with errors that say what the file is and what to do.

Shared by the student/resume loader (``mgd_det.engine.checkpoint.MGDCheckpointer``) and the
teacher loader (``mgd_det.modeling.teacher.StrictCheckpointer``), so both name the file,
cap key lists, and tell a file torch refuses for safety (``weights_only``) from a truncated
one.

An MGD checkpoint holds the student under ``student.``, the distillation state under
``distiller.`` and the teacher's file digest; a plain detector checkpoint holds none of them.
"""
import glob
import os
import re
from typing import Dict, List, Optional

from mgd_det.errors import CheckpointError

STUDENT_PREFIX = "student."
DIGEST_KEY = "teacher_sha256"
KEY_LIST_LIMIT = 5  # keys named per kind of mismatch in an error


class CheckpointLoadError(CheckpointError):
    """A checkpoint file cannot be read (missing, truncated, corrupt or not a checkpoint)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A valid checkpoint that torch refuses to load with ``weights_only=True``."""


def is_mgd_state(state: Dict) -> bool:
    return any(key.startswith(STUDENT_PREFIX) for key in state)


def _listed(keys: List, limit: Optional[int]) -> str:
    keys = sorted(keys)
    if limit is None or len(keys) <= limit:
        return f"{keys}"
    return f"{keys[:limit]} ... and {len(keys) - limit} more"


def incompatibility_problems(incompatible, limit: Optional[int] = KEY_LIST_LIMIT) -> List[str]:
    """Human-readable missing / unexpected / mis-shaped keys (at most ``limit`` of each)."""
    problems: List[str] = []
    # fvcore reports a mis-shaped key as missing too: name it once, as a shape mismatch.
    mis_shaped = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in mis_shaped]
    if missing:
        problems.append(f"missing keys: {_listed(missing, limit)}")
    if incompatible.unexpected_keys:
        problems.append(f"unexpected keys: {_listed(incompatible.unexpected_keys, limit)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k} (file {a}, model {b})" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"shape mismatches: {_listed(shapes, limit)}")
    return problems


def _unsafe_reason(text: str) -> str:
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    return f"a Python object ({match.group(1)})" if match else "a Python object that is not a tensor"


def _first_sentence(text: str, limit: int = 100) -> str:
    sentence = " ".join(text.split()).split(". ")[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def other_checkpoints(filename: str) -> List[str]:
    """Other ``.pth`` files beside ``filename`` (names only, newest name first)."""
    folder = os.path.dirname(filename) or "."
    names = sorted((os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(folder), "*.pth"))), reverse=True)
    return [n for n in names if n != os.path.basename(filename)]


def load_failure(filename: str, err: BaseException, what: str = "checkpoint") -> CheckpointLoadError:
    """The error to raise when reading ``filename`` failed with ``err``."""
    text = str(err)
    # "Unsupported global": a well-formed pickle naming a Python object (numpy array, custom
    # class). Garbage bytes fail in the same unpickler with e.g. "Unsupported operand".
    if "Unsupported global" in text:
        quoted = filename.replace("'", "\\'")
        return UnsafeCheckpointError(
            f"{what} {filename} is a valid file but holds {_unsafe_reason(text)}, which torch "
            "refuses to load with weights_only=True (it could run code); it is not corrupt. If you "
            "trust its origin, convert it once to tensors only: python -c \"import torch; "
            f"d = torch.load('{quoted}', weights_only=False); torch.save({{'model': d.get('model', d)}}, "
            f"'{quoted}.tensors.pth')\" and use the .tensors.pth file", path=filename,
        )
    if isinstance(err, (FileNotFoundError, IsADirectoryError)):
        return CheckpointLoadError(f"{what} {filename} not found: check the path", path=filename)
    others = other_checkpoints(filename)
    earlier = (f"; to resume from an earlier one ({', '.join(others[:3])}), write its name into "
               f"{os.path.join(os.path.dirname(filename) or '.', 'last_checkpoint')}") if others else ""
    return CheckpointLoadError(
        f"cannot read {what} {filename} ({type(err).__name__}: {_first_sentence(text)}): the "
        "file is truncated or corrupt (e.g. copied incompletely, or written by a version without "
        f"atomic saves that was killed while saving) or not a checkpoint; replace or delete it{earlier}",
        path=filename,
    )
