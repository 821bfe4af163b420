"""Log files that fail quietly, once, when the disk is full.

Python's logging prints "--- Logging error ---" and a traceback on stderr for every record
it cannot write, and Detectron2 closes its cached log streams at exit, where a last failed
flush adds "Exception ignored in atexit callback". On a full disk (or under a file-size
limit) that buried the run's one ERROR line under a handful of tracebacks.

:func:`guard_log_files` changes the file handlers of our loggers so that the first write
that fails for lack of space is remembered (:func:`log_write_failure`), the stream is pointed
at ``/dev/null`` (so nothing retries, and the exit-time flush succeeds), and the run goes on
logging to the terminal. The ERROR line then says where the log could not be written
instead of pointing at a log file that does not hold the traceback.
"""
import errno
import logging
import os
import sys
import types
from typing import Iterable, Optional, Tuple

logger = logging.getLogger(__name__)

# errno values of a write that failed for lack of space (disk, quota, file-size limit).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_GUARDED = "_mgd_guarded"
_failure: Optional[Tuple[str, OSError]] = None


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def log_write_failure() -> Optional[Tuple[str, OSError]]:
    """``(log file, error)`` of the first log write that failed for lack of space, if any."""
    return _failure


def _silence_stream(stream) -> None:
    """Point the stream's file descriptor at /dev/null: buffered bytes and later writes go
    nowhere instead of failing again (the file is already incomplete)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _handle_error(handler: logging.Handler, record: logging.LogRecord) -> None:
    global _failure
    exc = sys.exc_info()[1]
    if not is_no_space(exc):
        handler._mgd_original_handle_error(record)
        return
    stream = getattr(handler, "stream", None)
    path = getattr(handler, "baseFilename", None) or getattr(stream, "name", "the log file")
    _silence_stream(stream)
    if _failure is None:
        _failure = (str(path), exc)
        logger.warning("Cannot write the log file %s (%s): logging to the terminal only from now on.",
                       path, exc.strerror)


def guard_log_files(names: Iterable[str], is_console) -> None:
    """Make the file handlers of the loggers ``names`` fail quietly on a full disk (idempotent)."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if is_console(handler) or getattr(handler, _GUARDED, False):
                continue
            handler._mgd_original_handle_error = handler.handleError
            handler.handleError = types.MethodType(_handle_error, handler)
            setattr(handler, _GUARDED, True)
