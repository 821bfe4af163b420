"""Command-line error handling: one line per anticipated error, the details in the log file.

What a user sees when a run cannot start or stops for a reason they can fix (a config
value, a missing file, a checkpoint that does not fit, broken data, a device that is not
there) is a single line on stderr and an exit code != 0::

    ERROR: <what is wrong>, <which key or file>, <how to fix it> (traceback in OUT/log.txt)

The traceback (and the full config, see :func:`quiet_default_setup`) go to the run's log
file only. Anything not recognised as anticipated is a bug and keeps its traceback.

Pieces, used by ``tools/train_net.py`` and ``tools/export_student.py``:

- :func:`error_line` decides: an :class:`~mgd_det.errors.MGDUserError` (its message), or a
  message Detectron2/torch/the OS gives for a common mistake (:data:`KNOWN_ERRORS`), else None;
- :func:`report_errors` wraps ``main``: it logs the traceback of an anticipated error to the
  log file; in a process started by a multi-process launch it re-raises it as a
  :class:`ReportedError` carrying the line, which reaches the parent inside torch's
  ``ProcessRaisedException`` text, so the line is printed once, by the parent;
- :func:`install_excepthook` prints the line for anticipated errors that end the program.

A Ctrl-C (KeyboardInterrupt) is reported the same way, as an interruption, never as a
failure: ``ERROR: interrupted (Ctrl-C) ...`` naming the last complete checkpoint (or the
save it stopped, whose partial file is removed); the process then ends by SIGINT (exit status
130), :func:`run_cli` returns 130.

``MGD_TRACEBACK=1`` in the environment prints tracebacks on the terminal as well.
"""
import functools
import logging
import os
import re
import sys
import threading
import traceback
from typing import Callable, List, Optional, Pattern, Tuple

from mgd_det.engine.log_files import guard_log_files, log_write_failure
from mgd_det.errors import MGDUserError

logger = logging.getLogger(__name__)

# ``logger.info(msg, extra={FILE_ONLY: True})``: written to the log file, not the terminal.
FILE_ONLY = "mgd_file_only"
LOGGERS = ("detectron2", "fvcore", "mgd_det")
# Detectron2's TrainerBase.train logs "Exception during training:" with the traceback here.
TRAIN_LOOP_LOGGER = "detectron2.engine.train_loop"
_REPORTED_MARK = "ReportedError: "
INTERRUPTED_EXIT = 130  # 128 + SIGINT: the shell's status of a process ended by Ctrl-C
_LOGGED = "_mgd_logged"


class ReportedError(Exception):
    """An anticipated error, already logged; its message is the line for the terminal."""


# ------------------------------------------------------------------- classification
def _cuda_device_line(m, exc):
    return (f"the CUDA device cannot be used here ({m.group(0).strip()}), MODEL.DEVICE: set "
            "MODEL.DEVICE cpu, or check the GPU driver and CUDA_VISIBLE_DEVICES")


# (exception types, pattern on the message or traceback, line builder(match, exc)).
KNOWN_ERRORS: List[Tuple[Tuple[type, ...], Pattern, Callable]] = [
    ((KeyError,), re.compile(r"Dataset '([^']+)' is not registered"),
     lambda m, e: (f"data set '{m.group(1)}' is not registered (DATASETS.TRAIN / DATASETS.TEST): "
                   f"register your COCO-format data with DATASETS.COCO_SETS "
                   f"\"('{m.group(1)}:path/to/annotations.json:path/to/images',)\" or use a bundled "
                   "set such as mini_digits_train (datasets/README.md)")),
    ((AssertionError, FileNotFoundError, OSError), re.compile(r"Checkpoint (.+) not found!"),
     lambda m, e: (f"checkpoint {m.group(1)} not found (MODEL.WEIGHTS or last_checkpoint): check "
                   "the path, or leave MODEL.WEIGHTS empty to start from scratch")),
    ((AssertionError,), re.compile(r"assert num_gpus_per_machine <= torch\.cuda\.device_count\(\)"),
     lambda m, e: ("--num-gpus is larger than the number of visible GPUs (--num-gpus): lower it, "
                   "or set MODEL.DEVICE cpu to run CPU processes")),
    ((AssertionError,), re.compile(r"dist_url=auto not supported in multi-machine jobs"),
     lambda m, e: "--dist-url auto works on one machine only (--dist-url): pass --dist-url tcp://HOST:PORT"),
    ((AssertionError,), re.compile(r"Total batch size \((\d+)\) must be divisible by the number of gpus \((\d+)\)"),
     lambda m, e: (f"SOLVER.IMS_PER_BATCH {m.group(1)} is not divisible by the {m.group(2)} processes "
                   f"(SOLVER.IMS_PER_BATCH, --num-gpus): use a multiple of {m.group(2)}")),
    ((RuntimeError, AssertionError, ValueError),
     re.compile(r"Torch not compiled with CUDA enabled|Found no NVIDIA driver[^\n]*|No CUDA GPUs are available"
                r"|CUDA driver initialization failed[^\n]*|Invalid device id"),
     _cuda_device_line),
    ((RuntimeError, MemoryError),
     re.compile(r"CUDA out of memory|out of memory"),
     lambda m, e: ("out of memory (SOLVER.IMS_PER_BATCH, INPUT.MIN_SIZE_TRAIN): lower the batch per "
                   "process or the input size, or use more processes (--num-gpus)")),
    ((AssertionError,), re.compile(r"No valid data found in (.+?)\.?$|Dataset '(.+)' is empty!"),
     lambda m, e: (f"no usable image in data set {m.group(1) or m.group(2)} (DATASETS.TRAIN): every image "
                   "lacks valid annotations (see the data set check line above) or the set is empty; "
                   "fix the annotation file, or set DATALOADER.FILTER_EMPTY_ANNOTATIONS False")),
    ((FloatingPointError,), re.compile(r"Loss became infinite or NaN at iteration=(\d+)"),
     lambda m, e: (f"training diverged: the loss became infinite or NaN at iteration {m.group(1)} "
                   "(SOLVER.BASE_LR, MGD.FACTORS): lower SOLVER.BASE_LR, enable "
                   "SOLVER.CLIP_GRADIENTS, or lower the distillation factors; the log names "
                   "the feature that went non-finite")),
]


def _collapse(text: str) -> str:
    return " ".join(str(text).split())


def _os_error_line(exc: OSError) -> Optional[str]:
    import errno

    where = exc.filename or "a file"
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {where}: check the path given in the config or on the command line"
    if isinstance(exc, PermissionError):
        return f"permission denied: {where}: check the file's permissions or choose another OUTPUT_DIR"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"cannot write {where}: {exc.strerror}: free disk space (or raise the file-size "
                "limit) and resume with --resume")
    return None


def _earlier_user_error(exc: BaseException) -> Optional[MGDUserError]:
    """The first anticipated error that ``exc`` was raised while handling, if any."""
    found, seen = None, set()
    context = exc.__context__
    while context is not None and id(context) not in seen:
        seen.add(id(context))
        if isinstance(context, MGDUserError):
            found = context
        context = context.__context__
    return found


def error_line(exc: BaseException) -> Optional[str]:
    """The one terminal line for an anticipated error, or None for a bug.

    An anticipated error raised while another one was handled (e.g. a full disk: the
    checkpoint save fails, then Detectron2's writers fail to flush at the end of training)
    reports the first: it is the cause, and says what was kept."""
    line = _error_line(exc)
    if line is not None and not isinstance(exc, (MGDUserError, ReportedError)):
        earlier = _earlier_user_error(exc)
        if earlier is not None:
            return _error_line(earlier)
    return line


def _error_line(exc: BaseException) -> Optional[str]:
    if isinstance(exc, ReportedError):
        return str(exc)
    if isinstance(exc, MGDUserError):
        text = str(exc)
        if "Original Traceback" in text:  # re-raised by a DataLoader worker: keep the last line
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
        return _collapse(text)
    text = str(exc)
    if type(exc).__name__ == "ProcessRaisedException":  # torch.multiprocessing, from a worker
        found = [line for line in text.splitlines() if _REPORTED_MARK in line]
        return found[-1].split(_REPORTED_MARK, 1)[1].strip() if found else None
    if isinstance(exc, (AssertionError,)) and not text:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for types, pattern, build in KNOWN_ERRORS:
        if isinstance(exc, types):
            match = pattern.search(text)
            if match:
                return _collapse(build(match, exc))
    if isinstance(exc, OSError):
        return _os_error_line(exc)
    return None


# ----------------------------------------------------------------------- logging
class _ConsoleFilter(logging.Filter):
    """Keeps off the terminal: records marked FILE_ONLY, and the traceback Detectron2's training
    loop logs ("Exception during training") for an error that will be reported as one line
    (it stays in the log file; the line follows on stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FILE_ONLY, False):
            return False
        if record.name == TRAIN_LOOP_LOGGER and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            return not (isinstance(exc, Exception) and error_line(exc) is not None)
        return True


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def install_console_filter(names=LOGGERS) -> None:
    """Keep records marked ``extra={FILE_ONLY: True}`` off the terminal handlers of ``names``."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if _is_console(handler) and not any(isinstance(f, _ConsoleFilter) for f in handler.filters):
                handler.addFilter(_ConsoleFilter())


def log_file(name: str = "mgd_det") -> Optional[str]:
    """The file a logger writes to (Detectron2's ``setup_logger`` output), if any."""
    for handler in logging.getLogger(name).handlers:
        stream = getattr(handler, "stream", None)
        path = getattr(handler, "baseFilename", None) or getattr(stream, "name", None)
        if isinstance(path, str) and not _is_console(handler) and not path.startswith("<"):
            return path
    return None


def log_traceback(exc: BaseException, line: str) -> Optional[str]:
    """Write ``exc``'s traceback to the log file only; returns the file (None if no log yet)."""
    if log_write_failure() is not None:  # the log file is incomplete: do not point at it
        return None
    if getattr(exc, _LOGGED, False):
        return log_file()
    path = log_file()
    if path:
        logging.getLogger("mgd_det").error(
            "%s", line, exc_info=(type(exc), exc, exc.__traceback__), extra={FILE_ONLY: True}
        )
        try:
            setattr(exc, _LOGGED, True)
        except AttributeError:
            pass
    return path


def quiet_default_setup(cfg, args) -> None:
    """Detectron2's ``default_setup``, but the environment table, the config file's text and
    the ~400-line full config go to OUTPUT_DIR/log.txt only (and config.yaml), not the
    terminal, so that they never bury a short error message."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    # default_setup logs through these loggers; setup_logger is cached on its arguments, so
    # calling it first with default_setup's own arguments lets us filter the handlers it
    # then reuses. If a future Detectron2 calls it differently, the filter below still
    # applies to whatever handlers exist, at the price of a louder terminal.
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    setup_logger(output=output_dir, distributed_rank=rank, name="mgd_det")
    install_console_filter()
    # before default_setup's first records: on a full disk they are the first writes to fail
    guard_log_files(LOGGERS, _is_console)
    d2_logger = logging.getLogger("detectron2")
    quiet = _QuietDefaultSetup()
    for handler in d2_logger.handlers:
        if _is_console(handler):
            handler.addFilter(quiet)
    try:
        default_setup(cfg, args)
    finally:
        for handler in d2_logger.handlers:
            handler.removeFilter(quiet)
    install_console_filter()
    guard_log_files(LOGGERS, _is_console)
    if comm.is_main_process() and output_dir:
        logging.getLogger("mgd_det").info(
            "Full config and environment: %s; config saved to %s",
            os.path.join(output_dir, "log.txt"), os.path.join(output_dir, "config.yaml"),
        )


class _QuietDefaultSetup(logging.Filter):
    """Drops default_setup's long records from the terminal (they stay in log.txt)."""

    PREFIXES = ("Environment info:", "Contents of args.config_file", "Running with full config")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


# ----------------------------------------------------------------- entry points
def _in_spawned_worker() -> bool:
    try:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    except Exception:  # noqa: BLE001
        return False


def report_errors(main: Callable) -> Callable:
    """Decorate ``main``: anticipated errors are logged (traceback to the log file) and, in a
    multi-process worker, turned into a :class:`ReportedError` carrying the one line."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            line = error_line(exc)
            if line is None:
                raise
            log_traceback(exc, line)
            if _in_spawned_worker():
                raise ReportedError(line) from None
            raise

    return wrapped


def print_error_line(line: str, log_path: Optional[str] = None) -> None:
    """The terminal line (stderr), after anything already written to stdout; it names the log
    file holding the traceback, or the one that could not be written."""
    sys.stdout.flush()
    failed = log_write_failure()
    if log_path:
        suffix = f" (traceback in {log_path})"
    elif failed is not None:
        suffix = f" (the log file {failed[0]} could not be written: {failed[1].strerror})"
    else:
        suffix = ""
    sys.stderr.write(f"ERROR: {line}{suffix}\n")
    sys.stderr.flush()


def interrupt_line(exc: KeyboardInterrupt) -> str:
    """The line for a Ctrl-C (SIGINT): the note of the save it stopped (see
    ``MGDCheckpointer.save``), else where the last complete checkpoint is."""
    notes = getattr(exc, "__notes__", None) or []
    if notes:
        return _collapse(notes[-1])
    path = log_file()
    folder = os.path.dirname(path) if path else ""
    last = os.path.join(folder, "last_checkpoint") if folder else ""
    try:
        with open(last, "r", encoding="utf-8") as f:
            name = f.read().strip()
    except OSError:
        name = ""
    if name:
        return (f"interrupted (Ctrl-C): the last complete checkpoint {os.path.join(folder, name)} is kept: "
                "continue with --resume")
    return "interrupted (Ctrl-C)" + (f": no checkpoint was saved in {folder} yet" if folder else "")


def excepthook(exc_type, exc, tb) -> None:
    """``sys.excepthook``: one line for anticipated errors and Ctrl-C, the usual traceback
    otherwise. After a Ctrl-C Python still ends the process by SIGINT (exit status 130)."""
    if isinstance(exc, KeyboardInterrupt):
        line = interrupt_line(exc)
    else:
        line = error_line(exc) if isinstance(exc, Exception) else None
    if line is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    if os.environ.get("MGD_TRACEBACK"):
        sys.__excepthook__(exc_type, exc, tb)
    print_error_line(line, log_traceback(exc, line))


def thread_excepthook(args) -> None:
    """``threading.excepthook``: a helper thread that dies of an anticipated error (e.g.
    TensorBoard's event writer on a full disk) costs one WARNING line, its traceback goes to
    the log file; the main thread's own ERROR line follows. Other errors keep their traceback."""
    exc = args.exc_value
    line = error_line(exc) if isinstance(exc, Exception) else None
    if line is None:
        threading.__excepthook__(args)
        return
    log_traceback(exc, line)
    sys.stdout.flush()
    name = getattr(args.thread, "name", "a helper thread")
    sys.stderr.write(f"WARNING: {name} stopped: {line}\n")
    sys.stderr.flush()


def install_excepthook() -> None:
    """One line for anticipated errors: of the program (:func:`excepthook`) and of its
    helper threads (:func:`thread_excepthook`)."""
    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def run_cli(main: Callable, *args) -> int:
    """``main(*args)`` with the command-line treatment; returns the exit code (0, 1 after
    printing the line of an anticipated error, :data:`INTERRUPTED_EXIT` after a Ctrl-C). For
    tools and in-process callers such as tests."""
    try:
        main(*args)
    except KeyboardInterrupt as exc:
        line = interrupt_line(exc)
        print_error_line(line, log_traceback(exc, line))
        return INTERRUPTED_EXIT
    except Exception as exc:  # noqa: BLE001 -- re-raised below unless anticipated
        line = error_line(exc)
        if line is None:
            raise
        print_error_line(line, log_traceback(exc, line))
        return 1
    return 0
