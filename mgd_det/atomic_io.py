"""Write files so that a reader sees the old content or the new one, never a mix.

A checkpoint written in place is destroyed if the process dies, the disk fills up or a
file-size limit hits during the write: the run's only checkpoint becomes a truncated file.
:func:`atomic_write` writes to a temporary file in the same folder, flushes and fsyncs it,
then ``os.replace``-s it over the target (atomic on POSIX) and fsyncs the folder. On any
failure the temporary file is removed and the target is untouched.

Temporary files are named ``<target>.tmp-<pid>``: :func:`remove_stale_temporaries` deletes
those left by a killed process (whose pid no longer runs).
"""
import errno
import glob
import logging
import os
import re
from typing import BinaryIO, Callable, List, Optional

logger = logging.getLogger(__name__)

_TMP_PATTERN = re.compile(r"\.tmp-(\d+)$")


def temporary_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


class _RecordingFile:
    """A binary file that remembers the first OSError or KeyboardInterrupt of its ``write``.

    torch's zip writer turns a failed write (EFBIG, ENOSPC) -- and a Ctrl-C that lands in
    the write -- into an opaque "unexpected pos" RuntimeError; the recorded exception is the
    cause worth reporting.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error = None

    def write(self, data):
        try:
            return self._f.write(data)
        except (OSError, KeyboardInterrupt) as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path`` atomically.

    Raises whatever ``write`` or the file system raised (the OSError behind a writer's own
    error when there was one); ``path`` is then unchanged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        # Named here: otherwise the error would name the internal temporary file.
        reason = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: its folder {reason}", folder)
    tmp = temporary_name(path)
    recorder = None
    try:
        with open(tmp, "wb") as raw:
            recorder = _RecordingFile(raw)
            write(recorder)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        interrupt = _interruption(err, recorder)
        if interrupt is not None and interrupt is not err:
            raise interrupt from None  # a Ctrl-C stays a Ctrl-C, not a write failure
        if recorder is not None and recorder.error is not None and not isinstance(err, (OSError, KeyboardInterrupt)):
            raise recorder.error from err
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _interruption(err: BaseException, recorder) -> Optional[KeyboardInterrupt]:
    """The KeyboardInterrupt behind ``err`` (itself, a cause or context of it, or the one the
    writer recorded), if any: a writer in C++ (torch's) reports it as a RuntimeError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    error = recorder.error if recorder is not None else None
    return error if isinstance(error, KeyboardInterrupt) else None


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete ``*.tmp-<pid>`` files in ``folder`` whose process is gone; returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), "*.tmp-*")):
        match = _TMP_PATTERN.search(path)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        logger.warning("Removed %d partial file(s) left by an interrupted save: %s", len(removed), removed)
    return removed
