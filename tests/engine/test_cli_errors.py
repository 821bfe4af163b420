"""One clear line per anticipated error, the traceback in the log file.

``python tools/train_net.py`` with a bad input prints exactly one ``ERROR: ...`` line on
stderr (no traceback, no config dump before it), exits with code != 0 and leaves the
traceback and the full config in OUTPUT_DIR/log.txt; unexpected exceptions keep their
traceback; a multi-process launch prints the line once.
"""
import io
import logging
import os
import sys

import pytest

from _runner import TOOLS, run_tool
from _tiny import TINY_OPTS, config_path
from mgd_det.engine import cli
from _tools import load_tool
from mgd_det.errors import ConfigError, DataError

TRAIN_NET = os.path.join(TOOLS, "train_net.py")


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ERROR: ")]


def assert_one_line(proc):
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Running with full config" not in proc.stdout
    return lines[0]


# ----------------------------------------------------------------------- unit level
def test_error_line_for_user_errors_and_known_messages():
    assert cli.error_line(ConfigError("MGD.X must be > 0 (got 0)\n  e.g. 1")) == "MGD.X must be > 0 (got 0) e.g. 1"
    line = cli.error_line(KeyError("Dataset 'my_set' is not registered! Available datasets are: a, b"))
    assert "my_set" in line and "DATASETS.COCO_SETS" in line
    line = cli.error_line(FloatingPointError("Loss became infinite or NaN at iteration=7!"))
    assert "iteration 7" in line and "SOLVER.BASE_LR" in line
    assert cli.error_line(RuntimeError("a bug")) is None
    assert cli.error_line(ValueError("also a bug")) is None


def test_error_line_of_a_launch_assertion_without_message(tmp_path):
    source = tmp_path / "launch_like.py"
    source.write_text("def worker(num_gpus_per_machine, torch):\n"
                      "    assert num_gpus_per_machine <= torch.cuda.device_count()\n")
    namespace = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)

    class FakeCuda:
        @staticmethod
        def device_count():
            return 0

    class FakeTorch:
        cuda = FakeCuda

    with pytest.raises(AssertionError) as info:
        namespace["worker"](2, FakeTorch)
    assert "--num-gpus" in cli.error_line(info.value)


def test_error_line_from_a_worker_process():
    """torch's ProcessRaisedException carries the worker's traceback text."""
    ProcessRaisedException = type("ProcessRaisedException", (Exception,), {})
    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\nmgd_det.engine.cli.ReportedError: MGD.NORM_GROUPS must be > 0\n')
    assert cli.error_line(ProcessRaisedException(text)) == "MGD.NORM_GROUPS must be > 0"
    assert cli.error_line(ProcessRaisedException("Traceback ...\nRuntimeError: bug")) is None


def test_error_line_from_a_data_loader_worker():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "m.py", line 3\nmgd_det.errors.DataError: cannot read image /d/x.png: truncated\n')
    assert cli.error_line(wrapped) == "cannot read image /d/x.png: truncated"


def test_unexpected_exceptions_keep_their_traceback(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    try:
        raise RuntimeError("a genuine bug")
    except RuntimeError as err:
        cli.excepthook(type(err), err, err.__traceback__)
    assert "Traceback" in stderr.getvalue() and "ERROR:" not in stderr.getvalue()
    with pytest.raises(RuntimeError):
        cli.run_cli(lambda: (_ for _ in ()).throw(RuntimeError("bug")))


def test_run_cli_prints_one_line(capsys, monkeypatch):
    # No run's log file yet (earlier tests in this process may have left one on the logger).
    monkeypatch.setattr(logging.getLogger("mgd_det"), "handlers", [])

    def bad():
        raise ConfigError("MGD.NORM_GROUPS must be an integer > 0 (got 0)")

    assert cli.run_cli(bad) == 1
    err = capsys.readouterr().err
    assert err == "ERROR: MGD.NORM_GROUPS must be an integer > 0 (got 0)\n"


def test_our_train_net_is_importable_by_path():
    """``from tools.train_net import main`` would import Detectron2's own tools package."""
    train_net = load_tool("train_net")
    assert os.path.samefile(train_net.__file__, TRAIN_NET)
    assert hasattr(train_net, "check_run_args")
    args = train_net.parse_args(["--config-file", config_path("retinanet_R18_FPN.yaml"), "--eval-teacher"])
    with pytest.raises(ConfigError, match="--eval-teacher needs an MGD config"):
        train_net.setup(args)


# ------------------------------------------------------------------- command line
@pytest.mark.slow
def test_config_error_is_one_line_before_any_output(tiny_datasets, tmp_path):
    proc = run_tool("train_net", "--config-file", config_path("mgd_retinanet_R50_R18_AMP.yaml"),
                    "MGD.NORM_GROUPS", "0", "OUTPUT_DIR", tmp_path / "out", datasets=tiny_datasets)
    line = assert_one_line(proc)
    assert "MGD.NORM_GROUPS" in line and "got 0" in line
    assert not (tmp_path / "out").exists()  # nothing written for a config that cannot run


@pytest.mark.slow
def test_missing_teacher_one_line_and_log_holds_traceback_and_config(tiny_datasets, tmp_path):
    out = tmp_path / "out"
    proc = run_tool("train_net", "--config-file", config_path("mgd_retinanet_R50_R18_AMP.yaml"), *TINY_OPTS,
                    "MGD.TEACHER.WEIGHTS", tmp_path / "no_teacher" / "model_final.pth",
                    "OUTPUT_DIR", out, datasets=tiny_datasets)
    line = assert_one_line(proc)
    assert "Teacher weights not found" in line and "python tools/train_net.py --config-file" in line
    assert f"OUTPUT_DIR {tmp_path / 'no_teacher'}" in line
    assert line.endswith(f"(traceback in {out / 'log.txt'})")
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "Running with full config" in log


@pytest.mark.slow
def test_eval_only_without_weights_is_refused(tiny_datasets, tmp_path):
    proc = run_tool("train_net", "--config-file", config_path("retinanet_R18_FPN.yaml"), "--eval-only", *TINY_OPTS,
                    "OUTPUT_DIR", tmp_path / "out", datasets=tiny_datasets)
    line = assert_one_line(proc)
    assert "--eval-only" in line and "MODEL.WEIGHTS" in line


@pytest.mark.slow
def test_multi_process_error_is_printed_once(tiny_datasets, tmp_path):
    """Two gloo processes both fail in setup (the data set is unknown): one line, from the parent."""
    proc = run_tool("train_net", "--config-file", config_path("retinanet_R18_FPN.yaml"), "--num-gpus", "2",
                    *TINY_OPTS, "DATASETS.TRAIN", "('no_such_set',)", "OUTPUT_DIR", tmp_path / "out",
                    datasets=tiny_datasets)
    line = assert_one_line(proc)
    assert "no_such_set" in line and "not registered" in line


@pytest.mark.slow
def test_traceback_on_request(tiny_datasets, tmp_path):
    proc = run_tool("train_net", "--config-file", config_path("retinanet_R18_FPN.yaml"), "MGD.NOT_A_KEY", "1",
                    datasets=tiny_datasets, env={"MGD_TRACEBACK": "1"}, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and len(error_lines(proc.stderr)) == 1
