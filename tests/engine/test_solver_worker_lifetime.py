"""The background solver's worker (and the resource tracker it keeps alive) ends with the
trainer that started it, even when the trainer is killed by SIGKILL mid-solve."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")

# Started as the "trainer": one solve finished (the worker then idles waiting for the next
# update, the state a run spends most of its time in), then one large enough to still be
# running when the trainer is killed, or none.
TRAINER = textwrap.dedent("""
    import sys, time, torch
    from mgd_det.matching.background_solve import BackgroundSolver, SolveJob
    if __name__ == "__main__":
        solver = BackgroundSolver()
        solver.submit({"res2": SolveJob(torch.rand(64, 256, dtype=torch.float64), False, False)}).result()
        if sys.argv[1] == "mid-solve":
            solver.submit({"res5": SolveJob(torch.rand(2048, 2048, dtype=torch.float64), False, False)})
            time.sleep(0.3)
        print("solving", flush=True)
        time.sleep(600)
""")


def _children(pid: int):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is pending


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["idle", "mid-solve"])
def test_worker_and_tracker_exit_after_sigkill_of_trainer(tmp_path, moment):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    trainer = subprocess.Popen([sys.executable, str(script), moment], stdout=subprocess.PIPE, text=True)
    try:
        trainer.stdout.readline()  # the worker is up (idle, or solving)
        helpers = _children(trainer.pid)
        assert len(helpers) >= 2, f"worker + resource tracker expected, got {helpers}"
        assert all(_alive(p) for p in helpers)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in helpers):
        time.sleep(0.2)
    left = [p for p in helpers if _alive(p)]
    for pid in left:  # do not leak them from the test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind after kill -9 of their trainer: {left}"
