"""Bad inputs of train_net.py that once ended in a traceback or a misleading line.

Each is now one ``ERROR:`` line naming the key or file and the fix, found up front where the
config can tell: unlabeled folders and their keys, ``MGD.POSITIONS []``, a teacher/student
INPUT.FORMAT that cannot be converted, ``SOLVER.MAX_ITER 0``, OUTPUT_DIR under a file,
``MGD.UPDATE.APPLY_DELAY`` >= ``PERIOD``, an unlabeled set in DATASETS.TEST, a NaN in
``MGD.FACTORS``, ``tools/score_unlabeled.py`` without usable weights, and a Ctrl-C during a
checkpoint save (an interruption, not a full disk).
"""
import io
import logging
import os
import re
import signal
import sys
import time
import types

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

import _tiny
import mgd_det.data  # noqa: F401  (registers the data sets and their checks)
import mgd_det.modeling  # noqa: F401
from _runner import TOOLS, run_tool, start_command
from _stalled_save import INSIDE_TORCH_WRITER, stall_env, write_site
from mgd_det.config import get_mgd_cfg, setup_cfg
from mgd_det.config_checks import check_output_dir, check_solver, validate_mgd_config
from mgd_det.engine.assignment_hook import check_update_schedule
from mgd_det.errors import ConfigError, MGDUserError

MGD_CONFIG = _tiny.config_path("mgd_retinanet_R50_R18_AMP.yaml")
PLAIN_CONFIG = _tiny.config_path("retinanet_R18_FPN.yaml")
R18_TEACHER = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml"]


def problems_of(cfg):
    """The one ConfigError of validating ``cfg`` (its text), or "" when it validates."""
    try:
        validate_mgd_config(cfg)
    except ConfigError as err:
        return str(err), err.key
    return "", None


def plain_cfg(**datasets):
    cfg = get_mgd_cfg()
    for key, value in datasets.items():
        setattr(cfg.DATASETS, key, value)
    return cfg


# ----------------------------------------------------------- unlabeled folders, up front
@pytest.fixture
def folders(tmp_path):
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "scan.pdf").write_bytes(b"%PDF")
    (tmp_path / "photo.png").write_text("a file, not a folder")
    return tmp_path


@pytest.mark.parametrize("entry,expected,key", [
    ("pool:{tmp}/nope", r"MGD.UNLABELED.FOLDERS entry 'pool:.*/nope': folder .*/nope not found", "MGD.UNLABELED.FOLDERS"),
    ("pool:{tmp}/empty", r"holds no image file \(it is empty\); put PNG", "MGD.UNLABELED.FOLDERS"),
    ("pool:{tmp}/junk", r"holds no image file \(only 2 other file\(s\): .*\.pdf.*\.txt", "MGD.UNLABELED.FOLDERS"),
    ("pool:{tmp}/photo.png", r"photo.png is a file, not a folder: give the folder", "MGD.UNLABELED.FOLDERS"),
    ("pool", r"entry 'pool' is not 'name:path' \(no ':' between a name and a folder\)", "MGD.UNLABELED.FOLDERS"),
    ("pool:", r"entry 'pool:' is not 'name:path' \(no folder after the name\)", "MGD.UNLABELED.FOLDERS"),
    ("mini_digits_tiny_val:{tmp}/junk", r"'mini_digits_tiny_val' is the name of a labeled data set", "MGD.UNLABELED.FOLDERS"),
])
def test_bad_unlabeled_folders_entries_are_config_errors(folders, entry, expected, key):
    cfg = plain_cfg()
    cfg.MGD.UNLABELED.FOLDERS = (entry.format(tmp=folders),)
    text, found_key = problems_of(cfg)
    assert found_key == key and re.search(expected, text), text


@pytest.mark.parametrize("name,expected", [
    ("folder:{tmp}/nope", r"DATASETS.TRAIN entry 'folder:.*/nope': folder .* not found"),
    ("folder:{tmp}/empty", r"DATASETS.TRAIN entry .*empty': folder .* holds no image file"),
    ("folder:{tmp}/photo.png", r"photo.png is a file, not a folder"),
    ("folder:", r"DATASETS.TRAIN entry 'folder:' names no folder: write 'folder:/path/to/images'"),
])
def test_bad_folder_names_in_datasets_train(folders, name, expected):
    text, key = problems_of(plain_cfg(TRAIN=("mini_digits_tiny_train", name.format(tmp=folders))))
    assert key == "DATASETS.TRAIN" and re.search(expected, text), text
    assert "not found" not in text or "nope" in name  # a file is a file, not "not found"


def test_unlabeled_sets_in_datasets_test_are_refused_up_front(tiny_datasets):
    images = os.path.join(tiny_datasets, "mini_digits_tiny", "train")
    for test_sets, folders_entry in [((f"folder:{images}",), ()), (("pool",), (f"pool:{images}",)),
                                     (("mini_digits_pool_tiny",), ())]:
        cfg = plain_cfg(TEST=test_sets)
        cfg.MGD.UNLABELED.FOLDERS = folders_entry
        text, key = problems_of(cfg)
        assert key == "DATASETS.TEST", text
        assert f"DATASETS.TEST entry '{test_sets[0]}' is an unlabeled image folder" in text
    assert problems_of(plain_cfg(TRAIN=(f"folder:{images}",), TEST=("mini_digits_tiny_val",))) == ("", None)


def test_registration_errors_are_config_errors_naming_the_key(folders):
    from mgd_det.data.unlabeled import register_image_folder, register_unlabeled_from_cfg

    with pytest.raises(ConfigError, match="photo.png is a file, not a folder") as info:
        register_image_folder("photos", str(folders / "photo.png"), key="DATASETS.TRAIN")
    assert info.value.key == "DATASETS.TRAIN" and "not found" not in str(info.value)
    with pytest.raises(ConfigError, match="a labeled data set has that name") as info:
        register_image_folder("mini_digits_tiny_val", str(folders / "junk"))
    assert info.value.key == "MGD.UNLABELED.FOLDERS"
    cfg = plain_cfg(TRAIN=("mini_digits_tiny_train", "folder:"))
    with pytest.raises(ConfigError, match="names no folder") as info:  # was: the working directory, listed
        register_unlabeled_from_cfg(cfg)
    assert info.value.key == "DATASETS.TRAIN"


def test_a_folder_of_unreadable_images_is_a_data_error(tmp_path):
    from mgd_det.data.unlabeled import load_image_folder

    (tmp_path / "a.png").write_text("not a png")
    with pytest.raises(MGDUserError, match=r"has no readable image \(1 unreadable image file") as info:
        load_image_folder(str(tmp_path), "broken")
    assert info.value.path == str(tmp_path)


# ------------------------------------------------------------ the other new config checks
def mgd_cfg(*opts):
    return setup_cfg(MGD_CONFIG, [*R18_TEACHER, "MODEL.DEVICE", "cpu", *opts])


def test_no_pathway_at_all_is_named_up_front():
    from mgd_det.modeling.pathway_config import check_pathways

    for opts in (["MGD.POSITIONS", "[]", "MGD.FACTORS", "[]"], ["MGD.POSITIONS", "[]"]):
        problems = list(check_pathways(mgd_cfg(*opts)))
        assert len(problems) == 1 and problems[0].startswith("MGD.POSITIONS is empty"), problems
        assert "MGD.FACTORS has" not in problems[0]
    assert list(check_pathways(mgd_cfg("MGD.POSITIONS", "[]", "MGD.FACTORS", "[]", "MGD.KD.ENABLED", "True"))) == []


def test_input_formats_that_cannot_be_converted():
    from mgd_det.modeling.teacher import check_teacher_input_format

    (problem,) = check_teacher_input_format(mgd_cfg("MGD.TEACHER.OVERRIDES", "['INPUT.FORMAT', 'L']"))
    assert problem.startswith("INPUT.FORMAT 'BGR' (the student's) and the teacher's INPUT.FORMAT 'L'")
    assert "set INPUT.FORMAT 'L' for the student" in problem
    assert list(check_teacher_input_format(mgd_cfg("INPUT.FORMAT", "RGB"))) == []  # flipped by the model


def test_max_iter_zero_and_output_dir_under_a_file(tmp_path):
    cfg = get_mgd_cfg()
    cfg.SOLVER.MAX_ITER = 0
    (problem,) = check_solver(cfg)
    assert problem.startswith("SOLVER.MAX_ITER must be an integer > 0 (got 0)")
    (tmp_path / "file").write_text("x")
    for output_dir, where in ((tmp_path / "file" / "out", f"lies under {tmp_path / 'file'}, which is"),
                              (tmp_path / "file", "is")):
        cfg.OUTPUT_DIR = str(output_dir)
        (problem,) = check_output_dir(cfg)
        assert problem == (f"OUTPUT_DIR {output_dir} {where} a file, not a folder: choose another OUTPUT_DIR "
                           "(the run writes its checkpoints and log.txt into it)")
    cfg.OUTPUT_DIR = str(tmp_path / "new" / "run")
    assert list(check_output_dir(cfg)) == []


def test_apply_delay_must_be_below_the_period():
    cfg = get_mgd_cfg()
    cfg.MGD.UPDATE.APPLY_DELAY, cfg.MGD.UPDATE.PERIOD = 5, 2
    assert list(check_update_schedule(cfg)) == [
        "MGD.UPDATE.APPLY_DELAY (5) must be < MGD.UPDATE.PERIOD (2): a matching solved at iteration k is "
        "installed at k + APPLY_DELAY, before the next one is solved; lower APPLY_DELAY or raise PERIOD"]
    cfg.MGD.UPDATE.APPLY_DELAY, cfg.MGD.UPDATE.PERIOD = 2, 3
    assert list(check_update_schedule(cfg)) == []
    cfg.MGD.UPDATE.SLOW_AFTER, cfg.MGD.UPDATE.SLOW_PERIOD = 10, 2
    assert [p.split(":")[0] for p in check_update_schedule(cfg)] == [
        "MGD.UPDATE.APPLY_DELAY (2) must be < MGD.UPDATE.SLOW_PERIOD (2)"]
    cfg.MGD.UPDATE.SLOW_AFTER, cfg.MGD.UPDATE.PERIOD, cfg.MGD.UPDATE.APPLY_DELAY = 0, 0, 20  # one epoch: the hook
    assert list(check_update_schedule(cfg)) == []


def test_a_nan_factor_is_named_not_finite():
    with pytest.raises(ConfigError) as info:
        mgd_cfg("MGD.FACTORS", "[2e-8, 2e-8, nan, 2e-7]")
    assert info.value.key == "MGD.FACTORS"
    assert "holds nan, which is not a finite number" in str(info.value) and "write a list" not in str(info.value)
    with pytest.raises(ConfigError, match="holds -inf, which is not a finite number"):
        mgd_cfg("MGD.LOSS_WEIGHT", "-inf")


# ------------------------------------------------------------ the install iteration
class _Distiller:
    assigned = True

    def mean_costs(self):
        return {"m": torch.zeros(2, 2)}

    def solve_jobs(self, costs):
        return {}

    def install(self, solved, costs):
        return {}


class _Done:
    def result(self):
        return {}


def _hook(period, delay, max_iter, slow_after=0, slow_period=0):
    """The real assignment hook's schedule and install logic on a stand-in model."""
    from mgd_det.engine.assignment_hook import MGDAssignmentHook, UpdateSchedule

    hook = MGDAssignmentHook.__new__(MGDAssignmentHook)
    hook.schedule = UpdateSchedule(period, slow_after, slow_period)
    hook.apply_delay, hook.num_updates, hook.pending = delay, 0, None
    hook.update_iters, hook.applied_iters = [], []
    hook.solver = types.SimpleNamespace(submit=lambda jobs: _Done())
    hook.track = lambda: 0.0
    model = types.SimpleNamespace(distiller=_Distiller(), device=torch.device("cpu"))
    hook.trainer = types.SimpleNamespace(model=model, max_iter=max_iter, iter=0)
    return hook


@pytest.mark.parametrize("period,delay,max_iter,slow", [(3, 2, 8, (0, 0)), (4, 1, 13, (0, 0)), (5, 4, 30, (10, 7)),
                                                        (2, 5, 9, (0, 0))])
def test_installs_at_the_iteration_the_log_says(period, delay, max_iter, slow, caplog):
    """The "installs at iteration N" line is where the hook installs; with APPLY_DELAY >=
    the period (only an epoch-long PERIOD 0 gets there) the next update's due iteration."""
    hook = _hook(period, delay, max_iter, *slow)
    with EventStorage(), caplog.at_level(logging.INFO, logger="mgd_det.engine.assignment_hook"):
        for it in range(max_iter):
            hook.trainer.iter = it
            hook.after_step()
    said = [(int(t), int(n)) for t, n in re.findall(r"tracked at iteration (\d+); installs at iteration (\d+)",
                                                    caplog.text)]
    assert said and [t for t, _ in said] == hook.update_iters
    installed = dict(zip(hook.update_iters, hook.applied_iters))
    for tracked, stated in said:
        if stated <= max_iter:
            assert installed[tracked] == stated, (tracked, stated, installed)
        else:  # after the run's last iteration: said so, and not installed
            assert tracked not in installed and "only a resumed run that trains longer installs it" in caplog.text
            assert hook.pending is not None and hook.pending.apply_at == stated
    if delay < period:
        assert all(n == t + delay for t, n in said)


# ------------------------------------------------------------ Ctrl-C during a save
class _InterruptingFile:
    """Stands in for a write that a Ctrl-C lands in, inside torch's C++ writer."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def write(self, data):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_torch_turns_a_ctrl_c_in_its_writer_into_a_runtime_error():
    """What made a Ctrl-C read as a disk failure (kept so the fix keeps its reason)."""
    with pytest.raises(RuntimeError) as info:
        torch.save({"w": torch.zeros(1000)}, _InterruptingFile(io.BytesIO()))
    assert isinstance(info.value.__context__, KeyboardInterrupt)


def test_ctrl_c_during_a_checkpoint_save_is_an_interruption(tmp_path, monkeypatch, capsys):
    from mgd_det.engine import cli
    from mgd_det.engine.checkpoint import MGDCheckpointer

    checkpointer = MGDCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_0000000")
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, _InterruptingFile(f), *a, **k))
    with pytest.raises(KeyboardInterrupt) as info:
        checkpointer.save("model_0000001")
    line = cli.interrupt_line(info.value)
    assert line == (f"interrupted (Ctrl-C) while saving checkpoint {tmp_path / 'model_0000001.pth'}: the partial "
                    f"file was removed and the last complete checkpoint {tmp_path / 'model_0000000.pth'} and "
                    "last_checkpoint are intact: continue with --resume")
    assert "free disk space" not in line
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]

    def interrupted():
        checkpointer.save("model_0000001")

    assert cli.run_cli(interrupted) == cli.INTERRUPTED_EXIT == 130
    assert capsys.readouterr().err.startswith("ERROR: interrupted (Ctrl-C) while saving checkpoint")


def test_the_first_user_error_wins_over_a_later_one_while_handling_it():
    """A full disk: the save fails (what was kept is said), then a writer's flush fails too."""
    from mgd_det.engine import cli
    from mgd_det.engine.checkpoint_errors import save_failed

    try:
        try:
            raise save_failed("/run/model_final.pth", OSError(28, "No space left on device"), "")
        except MGDUserError:
            raise OSError(28, "No space left on device")
    except OSError as later:
        line = cli.error_line(later)
    assert line.startswith("could not save checkpoint /run/model_final.pth")


def test_a_helper_thread_dying_of_a_full_disk_costs_one_warning_line(monkeypatch):
    """TensorBoard's event writer thread on a full disk printed its traceback before the run's ERROR line."""
    import threading

    from mgd_det.engine import cli

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(logging.getLogger("mgd_det"), "handlers", [])
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    cli.install_excepthook()
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)

    def full_disk():
        raise OSError(28, "No space left on device", "/run/events.out.tfevents")

    def bug():
        raise RuntimeError("a genuine bug")

    for target in (full_disk, bug):
        thread = threading.Thread(target=target, name=target.__name__)
        thread.start()
        thread.join()
    lines = stderr.getvalue().splitlines()
    assert lines[0] == ("WARNING: full_disk stopped: cannot write /run/events.out.tfevents: No space left on "
                        "device: free disk space (or raise the file-size limit) and resume with --resume")
    assert "Traceback" not in "\n".join(lines[:2]) and "RuntimeError: a genuine bug" in stderr.getvalue()


# ------------------------------------------------------------ score_unlabeled.py
def _score_main():
    import runpy

    return runpy.run_path(os.path.join(TOOLS, "score_unlabeled.py"))["main"]


def test_score_unlabeled_refuses_missing_or_empty_weights_before_reading_the_pool(tmp_path, tiny_datasets,
                                                                                   monkeypatch):
    import mgd_det.data.unlabeled as unlabeled
    from mgd_det.errors import UserFileNotFoundError

    def never(name):
        raise AssertionError(f"the pool {name} was listed before the weights were checked")

    monkeypatch.setattr(unlabeled, "ensure_pool", never)
    monkeypatch.setattr(logging.getLogger("mgd_det"), "handlers", [])  # the tool adds its log file here
    main = _score_main()
    common = ["--dataset", "mini_digits_pool_tiny", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(UserFileNotFoundError, match="Teacher weights not found: .*nope.pth") as info:
        main(["--config-file", MGD_CONFIG, *common, *R18_TEACHER, "MGD.TEACHER.WEIGHTS", str(tmp_path / "nope.pth")])
    assert info.value.key == "MGD.TEACHER.WEIGHTS"
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS is empty") as info:
        main(["--config-file", PLAIN_CONFIG, *common, "MODEL.WEIGHTS", ""])
    assert info.value.key == "MODEL.WEIGHTS"
    with pytest.raises(UserFileNotFoundError, match="MODEL.WEIGHTS .*nope.pth not found"):
        main(["--config-file", PLAIN_CONFIG, *common, "MODEL.WEIGHTS", str(tmp_path / "nope.pth")])
    (tmp_path / "photo.png").write_text("x")
    with pytest.raises(ConfigError, match="--dataset 'folder:.*photo.png': .*is a file, not a folder"):
        main(["--config-file", PLAIN_CONFIG, "--dataset", f"folder:{tmp_path / 'photo.png'}", *common[2:],
              "MODEL.WEIGHTS", str(tmp_path / "nope.pth")])


# ------------------------------------------------------------ the real command lines
def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ERROR: ")]


def assert_one_line(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


TINY = ["DATASETS.TRAIN", "('mini_digits_tiny_train',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("opts,expected", [
    (["DATASETS.TRAIN", "('mini_digits_tiny_train', 'folder:{tmp}/photo.png')"],
     "DATASETS.TRAIN entry 'folder:{tmp}/photo.png': {tmp}/photo.png is a file, not a folder"),
    (["MGD.UNLABELED.FOLDERS", "('pool',)"], "MGD.UNLABELED.FOLDERS entry 'pool' is not 'name:path'"),
    (["MGD.UNLABELED.TEMPERATURE", "0.0"], "MGD.UNLABELED.TEMPERATURE is 0.0; it must be > 0"),
    (["MGD.UNLABELED.SAMPLING", "preferental"], "MGD.UNLABELED.SAMPLING is 'preferental'"),
    (["MGD.UNLABELED.LABELED_SHARE", "1.5"], "MGD.UNLABELED.LABELED_SHARE is 1.5; it must be in (0, 1)"),
    (["DATASETS.TEST", "('folder:{tmp}',)"], "DATASETS.TEST entry 'folder:{tmp}' is an unlabeled image folder"),
    (["MGD.POSITIONS", "[]", "MGD.FACTORS", "[]"], "MGD.POSITIONS is empty"),
    (["MGD.TEACHER.OVERRIDES", "['INPUT.FORMAT', 'L']"], "the teacher's INPUT.FORMAT 'L'"),
    (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER must be an integer > 0"),
    (["OUTPUT_DIR", "{tmp}/photo.png/run"], "OUTPUT_DIR {tmp}/photo.png/run lies under {tmp}/photo.png, which is a file"),
    (["MGD.UPDATE.APPLY_DELAY", "5", "MGD.UPDATE.PERIOD", "2"], "MGD.UPDATE.APPLY_DELAY (5) must be < MGD.UPDATE.PERIOD (2)"),
    (["MGD.FACTORS", "[2e-8, 2e-8, nan, 2e-7]"], "holds nan, which is not a finite number"),
], ids=["file_as_folder", "entry_without_path", "temperature_0", "sampling_typo", "labeled_share", "unlabeled_test",
        "no_positions", "input_format", "max_iter_0", "output_dir_under_file", "apply_delay", "nan_factor"])
def test_train_net_prints_one_line(tmp_path, tiny_datasets, tiny_teacher_weights, opts, expected):
    (tmp_path / "photo.png").write_text("x")
    opts = [o.format(tmp=tmp_path) for o in opts]
    proc = run_tool("train_net", "--config-file", MGD_CONFIG, *TINY, *R18_TEACHER, "MGD.TEACHER.WEIGHTS",
                    tiny_teacher_weights("retinanet_R18_FPN.yaml"), "OUTPUT_DIR", tmp_path / "out", *opts,
                    datasets=tiny_datasets)
    assert expected.format(tmp=tmp_path) in assert_one_line(proc)


@pytest.mark.slow
def test_score_unlabeled_prints_one_line(tmp_path, tiny_datasets):
    proc = run_tool("score_unlabeled", "--config-file", PLAIN_CONFIG, "--dataset", "mini_digits_pool_tiny",
                    "MODEL.DEVICE", "cpu", "OUTPUT_DIR", tmp_path / "out", datasets=tiny_datasets)
    line = assert_one_line(proc)
    assert line.startswith("ERROR: MODEL.WEIGHTS is empty") and f"(traceback in {tmp_path / 'out' / 'log.txt'})" in line
    assert "Traceback" in (tmp_path / "out" / "log.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_while_saving_is_reported_as_an_interruption(tmp_path, tiny_datasets):
    """The second checkpoint save stalls inside torch's writer (tests/_stalled_save.py); the run
    is interrupted there."""
    site, out, marker = tmp_path / "site", tmp_path / "run", tmp_path / "marker"
    write_site(site, INSIDE_TORCH_WRITER)
    proc = start_command(
        [sys.executable, os.path.join(TOOLS, "train_net.py"), "--config-file", PLAIN_CONFIG, *TINY,
         "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)],
        datasets=tiny_datasets, env=stall_env(site, marker), own_group=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the second save never started"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGINT  # ended by SIGINT: status 130 in a shell
    lines = error_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith(f"ERROR: interrupted (Ctrl-C) while saving checkpoint {out / 'model_0000001.pth'}")
    assert f"the last complete checkpoint {out / 'model_0000000.pth'} and last_checkpoint are intact" in lines[0]
    assert "free disk space" not in stderr
    assert sorted(n for n in os.listdir(out) if "model" in n or "checkpoint" in n) == ["last_checkpoint",
                                                                                       "model_0000000.pth"]
    torch.load(out / "model_0000000.pth", map_location="cpu", weights_only=True)
