"""A log file that cannot be written (full disk, file-size limit) costs one warning
on the terminal, not a traceback per record plus one at exit."""
import textwrap

import pytest

from _runner import run_code

# Logs through Detectron2's setup_logger (the cached, atexit-closed stream) under a 16 KiB
# file-size limit, so that writes of log.txt fail with EFBIG part-way.
SCRIPT = textwrap.dedent("""
    import logging, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
    from detectron2.utils.logger import setup_logger
    from mgd_det.engine.cli import LOGGERS, _is_console, install_console_filter
    from mgd_det.engine.log_files import guard_log_files, log_write_failure
    setup_logger(sys.argv[1], name="mgd_det")
    install_console_filter()
    if sys.argv[2] == "guarded":
        guard_log_files(LOGGERS, _is_console)
    log = logging.getLogger("mgd_det.run")
    for i in range(400):
        log.debug("record %d %s", i, "x" * 200)
    print("failure:", log_write_failure() and log_write_failure()[1].strerror)
""")


def run(tmp_path, mode):
    return run_code(SCRIPT, tmp_path / mode, mode, timeout=300)


@pytest.mark.slow
def test_full_log_file_gives_one_warning_and_no_traceback(tmp_path):
    result = run(tmp_path, "guarded")
    assert result.returncode == 0, result.stderr
    assert "failure: File too large" in result.stdout
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    assert "Exception ignored" not in result.stderr
    terminal = result.stdout + result.stderr  # Detectron2 logs to stdout
    warnings = [line for line in terminal.splitlines() if "Cannot write the log file" in line]
    assert len(warnings) == 1 and "log.txt" in warnings[0]
    assert (tmp_path / "guarded" / "log.txt").stat().st_size <= 16384


@pytest.mark.slow
def test_unguarded_handlers_show_the_tracebacks_this_replaces(tmp_path):
    result = run(tmp_path, "plain")
    assert "Logging error" in result.stderr and "failure: None" in result.stdout
