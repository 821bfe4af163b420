"""Faults during a run, as a user meets them: a full disk, a file-size limit, a diverging loss,
kill -9 (in the middle of a checkpoint save, or while the background solver runs) and Ctrl-C
during a save. Each ends in one ERROR line saying what was kept and how to go on (or, killed,
in silence); no complete checkpoint is lost, nothing is left running, and ``--resume``
continues the run.

The partial saves are staged with ``tests/_stalled_save.py``: the second checkpoint save of
the run stalls halfway and drops a marker file, at which the test sends its signal.
"""
import os
import signal
import subprocess

import pytest

from _as_user import Case, check, params, run_files
from _stalled_save import HALF_WRITTEN, INSIDE_TORCH_WRITER, stall_env, write_site

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def stalled(code):
    """The Case fields of a run whose second checkpoint save stalls (``code``): the signal goes
    when the stall begins."""
    return dict(setup=lambda u: write_site(u.c("site"), code),
                env=lambda u: stall_env(u.c("site"), u.c("save_started")), interrupt_on="save_started")


def first_checkpoint(u):
    return [u.c("run", "model_0000000.pth"), u.c("run", "last_checkpoint")]


def mount_small_disk(u, size="64k"):
    """A 64 KiB tmpfs at ``disk`` in the case (mounting needs root)."""
    os.makedirs(u.c("disk"))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", u.c("disk")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root ({' '.join(proc.stderr.split())[:80]})")


def unmount(u):
    if os.path.ismount(u.c("disk")):
        subprocess.run(["umount", "-l", u.c("disk")], capture_output=True)


def solver_run(u, flags=()):
    """An MGD run whose assignment is solved in the background every 2 iterations."""
    return u.mgd("SOLVER.MAX_ITER", "12", "MGD.UPDATE.PERIOD", "2", "MGD.UPDATE.APPLY_DELAY", "1",
                 run=u.c("run"), flags=flags)


CASES = [
    Case("disk_full_while_the_run_writes", lambda u: u.plain(run=u.c("disk", "run")),
         setup=mount_small_disk, teardown=unmount,
         error=r"{case}/disk/run/\S+ .*No space left on device.*free disk space"),
    Case("file_size_limit_while_saving", lambda u: u.mgd("SOLVER.MAX_ITER", "3", run=u.c("run"), flags=["--resume"]),
         setup=lambda u: u.copy_run(u.base.mgd_run), protect=run_files, shell_prefix="ulimit -f 20000;",
         error=r"could not save checkpoint {case}/run/model_0000002.pth \(OSError: \[Errno 27\] File too large\); "
               r"the previous checkpoint {case}/run/model_final.pth and last_checkpoint are intact: free disk space "
               r"\(or raise the file-size limit"),
    Case("loss_diverges_to_nan", lambda u: u.mgd("SOLVER.BASE_LR", "1e8", "SOLVER.MAX_ITER", "6"),
         error=r"training diverged: the loss became infinite or NaN at iteration \d+ \(SOLVER.BASE_LR, MGD.FACTORS\): "
               r"lower SOLVER.BASE_LR"),
    Case("kill_9_in_the_middle_of_a_checkpoint_save", lambda u: u.plain(run=u.c("run")),
         **stalled(HALF_WRITTEN), rc=-signal.SIGKILL,
         protect=first_checkpoint, then=lambda u: u.plain(run=u.c("run"), flags=["--resume"]),
         then_warning=r"Removed 1 partial file\(s\) left by an interrupted save"),
    Case("kill_9_of_the_trainer_while_the_solver_runs", solver_run,
         interrupt_on="model_0000001.pth", leader_only=True, rc=-signal.SIGKILL,
         then=lambda u: solver_run(u, flags=["--resume"])),
    Case("ctrl_c_while_a_checkpoint_is_written", lambda u: u.plain(run=u.c("run")),
         **stalled(INSIDE_TORCH_WRITER), interrupt=signal.SIGINT,
         rc=-signal.SIGINT, protect=first_checkpoint,
         error=r"interrupted \(Ctrl-C\) while saving checkpoint {case}/run/model_0000001.pth: the partial file was "
               r"removed and the last complete checkpoint {case}/run/model_0000000.pth and last_checkpoint are "
               r"intact: continue with --resume"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_fault_during_a_run(case, user):
    check(case, user)
