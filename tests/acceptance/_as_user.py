"""Running a bad input or a fault the way a new user meets it, and judging what they see.

A :class:`Case` is one real command line (``tools/train_net.py``, ``tools/export_student.py``,
``tools/score_unlabeled.py``, ``scripts/setup.sh``) run in a child process on the tiny mini
digits sets, with what it needs prepared in its own folder. :func:`check` holds it to what the
tools promise a user:

- a bad input ends in exactly one ``ERROR:`` line, the last line on stderr, naming the key or
  file and the fix; exit status 1;
- a fault that is handled says so in one WARNING and the run goes on (exit status 0);
- nothing is lost: a protected file (checkpoints, last_checkpoint, export inputs and outputs)
  that was readable before the command is readable after it;
- a run that is killed leaves none of its processes behind, and ``--resume`` continues it;
- no traceback on the terminal (stdout, where Detectron2 logs, or stderr).

Patterns are regular expressions searched in the line; ``{case}`` and ``{base}`` in them stand
for the case's folder and the base runs' folder (escaped).
"""
import dataclasses
import glob
import os
import re
import shlex
import shutil
import signal
import sys
import time
from typing import Callable, Dict, List, Optional

import pytest

from _runner import TOOLS, run_command, start_command
from _tiny import TINY_OPTS, config_path

PLAIN = config_path("retinanet_R18_FPN.yaml")
MGD = config_path("mgd_retinanet_R50_R18_AMP.yaml")
R18_TEACHER = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml"]
# The tests' tiny settings without evaluation, a checkpoint every iteration (the resume and
# fault cases need a run folder with model_0000000.pth, model_final.pth and last_checkpoint).
OPTS = TINY_OPTS + ["DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "1"]
# Lines that carry a tool's message ("setup.sh: ERROR: ..." for the set-up script).
ERROR_PREFIXES = ("ERROR: ", "setup.sh: ERROR: ")
TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class Base:
    """What every case may use, made once per session: the data root, a trained plain run
    (its model_final.pth is the teachers' weights), a trained MGD run, and 'own' COCO data
    (copies of the tiny train split, good and broken)."""

    datasets: str
    folder: str

    def p(self, *parts) -> str:
        return os.path.join(self.folder, *parts)

    @property
    def plain_run(self) -> str:
        return self.p("plain")

    @property
    def mgd_run(self) -> str:
        return self.p("mgd")

    @property
    def teacher(self) -> str:
        return os.path.join(self.plain_run, "model_final.pth")


class User:
    """One case's commands and its own folder (``c(...)``) on top of the session's :class:`Base`."""

    def __init__(self, base: Base, folder):
        self.base, self.folder = base, str(folder)

    def c(self, *parts) -> str:
        return os.path.join(self.folder, *parts)

    def copy_run(self, src: str, name: str = "run") -> str:
        return shutil.copytree(src, self.c(name))

    @staticmethod
    def tool(name: str, *args) -> List[str]:
        return [os.path.join(TOOLS, name + ".py"), *map(str, args)]

    def plain(self, *opts, run=None, flags=()) -> List[str]:
        """train_net.py on the plain R18 RetinaNet. Flags come before the KEY VALUE options,
        as Detectron2's parser requires."""
        return self.tool("train_net", "--config-file", PLAIN, *flags, *OPTS, "OUTPUT_DIR", run or self.c("out"), *opts)

    def mgd(self, *opts, run=None, flags=()) -> List[str]:
        """train_net.py on the MGD config with the base plain run as its (R18) teacher."""
        return self.tool("train_net", "--config-file", MGD, *flags, *OPTS, *R18_TEACHER,
                         "MGD.TEACHER.WEIGHTS", self.base.teacher, "OUTPUT_DIR", run or self.c("out"), *opts)

    def export(self, *args) -> List[str]:
        return self.tool("export_student", *args)

    def score(self, *args) -> List[str]:
        return self.tool("score_unlabeled", *args)

    def own_set(self, name: str, json_name: str, images: str = "images") -> List[str]:
        """Options registering the own data set ``name`` (an annotation file of the base's
        'own' folder) and training on it."""
        own = self.base.p("own")
        return ["DATASETS.COCO_SETS", f"('{name}:{os.path.join(own, json_name)}:{os.path.join(own, images)}',)",
                "DATASETS.TRAIN", f"('{name}',)"]


@dataclasses.dataclass
class Case:
    """One bad input or fault and what the user must see (see the module's docstring)."""

    id: str  # what it tries, as the test id
    argv: Callable[[User], List[str]]  # the command line after ``program``
    error: str = ""  # pattern of the one ERROR line; "" when the command must print none
    warning: str = ""  # pattern of the WARNING a handled fault prints
    rc: int = 1  # exit status (negative: ended by that signal)
    setup: Optional[Callable[[User], object]] = None
    protect: Callable[[User], List[str]] = lambda u: []  # files that must survive
    env: Callable[[User], Dict[str, str]] = lambda u: {}
    program: str = sys.executable  # what runs argv ("bash" for shell scripts)
    shell_prefix: str = ""  # run under bash with this first, e.g. "ulimit -f 20000;"
    interrupt_on: str = ""  # send ``interrupt`` when a file matching this glob appears under the case
    interrupt: int = signal.SIGKILL
    leader_only: bool = False  # signal the tool's process alone, then count what it left running
    then: Optional[Callable[[User], List[str]]] = None  # a follow-up command (--resume) that must succeed
    then_warning: str = ""  # pattern of the follow-up's WARNING
    teardown: Optional[Callable[[User], object]] = None  # after the case, whatever happened

    def param(self):
        return pytest.param(self, id=self.id)


class TracebackOnScreen(AssertionError):
    """A traceback reached the terminal (checked last: everything else is checked first, so the
    failure that shows is the first promise broken)."""


def params(cases: List[Case]) -> list:
    """``cases`` for ``pytest.mark.parametrize("case", ...)``, ids unique."""
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), ids
    return [c.param() for c in cases]


@dataclasses.dataclass
class Seen:
    """What a command left on the terminal."""

    rc: int
    stdout: str
    stderr: str
    left: Optional[int] = None  # processes of its group still running (counted for leader_only)

    @property
    def error_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(ERROR_PREFIXES)]

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def readable(path: str) -> bool:
    """The file is there and, for a checkpoint, torch loads it."""
    if not os.path.isfile(path):
        return False
    if path.endswith(".pth"):
        import torch

        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any failure to load is a lost file
            return False
    return True


def execute(case: Case, user: User, argv: List[str], env: Dict[str, str]) -> Seen:
    """Run one command of the case, interrupting it as the case says."""
    command = [case.program, *argv]
    if case.shell_prefix:
        command = ["bash", "-c", case.shell_prefix + " exec " + " ".join(shlex.quote(str(a)) for a in command)]
    if not (case.interrupt_on or case.leader_only):
        proc = run_command(command, datasets=user.base.datasets, env=env, timeout=900)
        return Seen(proc.returncode, proc.stdout, proc.stderr)
    proc = start_command(command, datasets=user.base.datasets, env=env, own_group=True)
    try:
        # The pipes are drained after the signal: the tiny runs print far less than a pipe holds.
        deadline = time.monotonic() + 600
        while case.interrupt_on and proc.poll() is None and time.monotonic() < deadline:
            if glob.glob(user.c("**", case.interrupt_on), recursive=True):
                if case.leader_only:
                    os.kill(proc.pid, case.interrupt)
                else:
                    os.killpg(proc.pid, case.interrupt)
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    left = leftovers(proc.pid) if case.leader_only else None
    return Seen(proc.returncode, out, err, left)


def group_members(pgid: int) -> List[int]:
    """Live (not zombie) processes of the process group ``pgid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def leftovers(pgid: int, wait_s: float = 20.0) -> int:
    """How many processes of the group still run after ``wait_s`` (a process that watches
    its parent needs a moment); they are killed, so a failing case leaks nothing itself."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.2)
    left = group_members(pgid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(left)


def pattern(text: str, user: User) -> str:
    return text.format(case=re.escape(user.folder), base=re.escape(user.base.folder))


def check(case: Case, user: User) -> None:
    """Run the case and assert what the user must see (the module's docstring)."""
    try:
        if case.setup:
            case.setup(user)
        protected = case.protect(user)
        before = {path: readable(path) for path in protected}
        seen = execute(case, user, case.argv(user), case.env(user))
        shown = seen.stderr[-4000:]
        assert seen.rc == case.rc, shown
        if case.error:
            assert len(seen.error_lines) == 1, shown
            assert seen.last_line == seen.error_lines[0], shown
            assert re.search(pattern(case.error, user), seen.error_lines[0]), seen.error_lines[0]
        else:
            assert seen.error_lines == [], shown
        if case.warning:
            assert re.search(pattern(case.warning, user), seen.stdout + seen.stderr), shown
        assert seen.left in (None, 0), f"{seen.left} process(es) left behind"
        if case.then is not None:
            follow = execute(dataclasses.replace(case, interrupt_on="", shell_prefix=""), user, case.then(user), {})
            assert follow.rc == 0, follow.stderr[-4000:]
            assert follow.left in (None, 0), f"{follow.left} process(es) left behind by the follow-up"
            if case.then_warning:
                assert re.search(pattern(case.then_warning, user), follow.stdout + follow.stderr), follow.stderr[-4000:]
        lost = [path for path in protected if before[path] and not readable(path)]
        assert lost == [], f"lost: {lost}"
        screens = [seen] + ([follow] if case.then is not None else [])
        for screen in screens:  # stdout too: Detectron2's logger writes there
            if TRACEBACK in screen.stdout + screen.stderr:
                raise TracebackOnScreen((screen.stdout + screen.stderr)[-4000:])
    finally:
        if case.teardown:
            case.teardown(user)


# ------------------------------------------------------------ small preparations used by cases
def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def truncate(path: str, fraction: float = 0.5) -> str:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return path


def truncated_copy(src: str, dst: str) -> str:
    shutil.copy(src, dst)
    return truncate(dst)


def numpy_checkpoint(src: str, dst: str) -> str:
    """A copy of ``src`` holding a numpy array too (a valid file that weights_only refuses)."""
    import numpy as np
    import torch

    data = torch.load(src, map_location="cpu", weights_only=True)
    data["extra_stats"] = np.zeros(3)
    torch.save(data, dst)
    return dst


def run_files(user: User, folder: str = "run") -> List[str]:
    """The checkpoint files of a copied base run."""
    return [user.c(folder, name)
            for name in ("model_final.pth", "model_0000001.pth", "model_0000000.pth", "last_checkpoint")]

