#!/usr/bin/env python
"""Run ~90 bad inputs and faults through ``tools/train_net.py``, ``tools/export_student.py``,
``tools/score_unlabeled.py`` and ``scripts/setup.sh`` and tabulate what a user sees.

    python tools/bad_input_survey.py --work /tmp/mgd_survey [--only 9,28] [--markdown out.md]
    python tools/bad_input_survey.py --list                   # the numbered cases, nothing run

Every case runs the real command line in a subprocess on the tiny mini digits splits
(generated under ``<work>/datasets``, 64x64 images, 1-2 iterations). Columns: the one line
the user sees (the ``ERROR:`` line, or the WARNING a fault that is handled produces), the
exit code (negative: ended by that signal; -2 is a Ctrl-C, status 130 in a shell), whether a
traceback reached the terminal, and whether anything was lost: a file that existed and was
valid before the case (checkpoints, last_checkpoint, export inputs and outputs) and is
missing or unreadable after it. Cases that kill a run also count the processes it left
behind. Base runs are trained once per work folder (about 2 minutes on 2 cores); the whole
survey takes 15-25 minutes. The full-disk case mounts a small tmpfs (root only; skipped
otherwise).
"""
import argparse
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(REPO, "configs", "mini_digits")
PLAIN = os.path.join(MINI, "retinanet_R18_FPN.yaml")
MGD = os.path.join(MINI, "mgd_retinanet_R50_R18_AMP.yaml")
MASK = os.path.join(MINI, "mask_rcnn_R18_FPN.yaml")
# As tests/_tiny.py: 64x64 tiny splits, batch 2, no evaluation unless a case asks for it.
TINY = [
    "DATASETS.TRAIN", "('mini_digits_tiny_train',)", "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0",
    "MGD.UPDATE.NUM_BATCHES", "2", "MODEL.DEVICE", "cpu",
]
R18_TEACHER = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml"]


@dataclasses.dataclass
class Case:
    title: str
    argv: Callable[["Survey"], List[str]]  # command line (after the python executable)
    setup: Optional[Callable[["Survey"], None]] = None
    protect: Callable[["Survey"], List[str]] = lambda s: []  # files that must survive
    expect: str = ""  # regex of the WARNING line a handled fault prints (rc 0 cases)
    shell_prefix: str = ""  # e.g. "ulimit -f 2000;"
    kill_on_tmp: str = ""  # SIGKILL the process when a file matching this glob appears under the case
    then: Optional[Callable[["Survey"], List[str]]] = None  # a follow-up command (e.g. --resume)
    env: Callable[["Survey"], Dict[str, str]] = lambda s: {}  # extra environment of the first command
    kill_signal: int = signal.SIGKILL  # sent when kill_on_tmp appears
    kill_leader_only: bool = False  # signal the tool's process alone (not its group), then count leftovers
    program: str = sys.executable  # what runs argv ("bash" for shell scripts)
    teardown: Optional[Callable[["Survey"], None]] = None  # after the case, whatever happened


class Skip(Exception):
    """Raised by a case's setup when this machine cannot run it (the message says why)."""


@dataclasses.dataclass
class Result:
    number: int
    title: str
    line: str
    rc: int
    traceback: bool
    lost: str
    seconds: float


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def valid(path) -> bool:
    if not os.path.isfile(path):
        return False
    if path.endswith(".pth"):
        import torch

        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            return False
    return True


class Survey:
    def __init__(self, work: str):
        self.work = os.path.abspath(work)
        self.env = dict(os.environ, MGD_DATASETS=os.path.join(self.work, "datasets"), PYTHONWARNINGS="ignore")
        self.env.pop("MGD_TRACEBACK", None)
        self.case_dir = ""

    # ------------------------------------------------------------------ paths
    def p(self, *parts):
        return os.path.join(self.work, *parts)

    @property
    def plain_run(self):
        return self.p("base", "plain")

    @property
    def mgd_run(self):
        return self.p("base", "mgd")

    def c(self, *parts):
        return os.path.join(self.case_dir, *parts)

    def copy_run(self, src, name="run"):
        shutil.copytree(src, self.c(name))
        return self.c(name)

    # ------------------------------------------------------------------ base
    def train_net(self, *args):
        return [os.path.join(REPO, "tools", "train_net.py"), *map(str, args)]

    def export(self, *args):
        return [os.path.join(REPO, "tools", "export_student.py"), *map(str, args)]

    def score(self, *args):
        return [os.path.join(REPO, "tools", "score_unlabeled.py"), *map(str, args)]

    def prepare(self):
        os.makedirs(self.p("base"), exist_ok=True)
        if not os.path.isfile(os.path.join(self.plain_run, "model_final.pth")):
            self._run_ok(self.train_net("--config-file", PLAIN, *TINY, "OUTPUT_DIR", self.plain_run))
        if not os.path.isfile(os.path.join(self.mgd_run, "model_final.pth")):
            self._run_ok(self.train_net("--config-file", MGD, *TINY, *R18_TEACHER, "MGD.TEACHER.WEIGHTS",
                                        self.teacher, "OUTPUT_DIR", self.mgd_run))
        self._own_data()

    @property
    def teacher(self):
        return os.path.join(self.plain_run, "model_final.pth")

    def _run_ok(self, argv):
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"base run failed: {' '.join(argv)}\n{proc.stderr[-3000:]}")

    def _own_data(self):
        """Copies of the tiny train split as 'own' COCO data, good and broken variants."""
        own = self.p("own")
        if os.path.isfile(os.path.join(own, "good.json")):
            return
        root = self.p("datasets", "mini_digits_tiny")
        data = json.load(open(os.path.join(root, "annotations", "instances_train.json")))
        shutil.copytree(os.path.join(root, "train"), os.path.join(own, "images"))
        write = lambda name, d: json.dump(d, open(os.path.join(own, name), "w"))  # noqa: E731
        write("good.json", data)
        bad = json.loads(json.dumps(data))
        anns = bad["annotations"]
        w = {i["id"]: i["width"] for i in bad["images"]}[anns[4]["image_id"]]
        del anns[0]["bbox"]
        anns[1]["bbox"] = [1.0, 2.0, float("nan"), 5.0]
        anns[2]["bbox"] = [10.0, 10.0, -5.0, 8.0]
        anns[3]["bbox"] = []
        anns[4]["bbox"] = [w - anns[4]["bbox"][2] + 0.5] + anns[4]["bbox"][1:]
        anns[5]["bbox"] = [w + 20.0] + anns[5]["bbox"][1:]
        write("bad_boxes.json", bad)
        empty = json.loads(json.dumps(data))
        for ann in empty["annotations"]:
            ann["bbox"] = [1.0, 1.0, -1.0, 1.0]
        write("all_invalid.json", empty)
        write("no_categories.json", {k: v for k, v in data.items() if k != "categories"})
        unknown = json.loads(json.dumps(data))
        unknown["annotations"][0]["category_id"] = 99
        write("unknown_category.json", unknown)
        text = json.dumps(data)
        open(os.path.join(own, "truncated.json"), "w").write(text[: len(text) // 2])
        broken = os.path.join(own, "broken_images")
        shutil.copytree(os.path.join(own, "images"), broken)
        first = sorted(os.listdir(broken))[0]
        payload = open(os.path.join(broken, first), "rb").read()
        open(os.path.join(broken, first), "wb").write(payload[: len(payload) // 3])

    def own_set(self, name, json_name, images="images"):
        return ["DATASETS.COCO_SETS", f"('{name}:{self.p('own', json_name)}:{self.p('own', images)}',)",
                "DATASETS.TRAIN", f"('{name}',)"]

    # ------------------------------------------------------------------ running
    def run_case(self, index: int, case: Case) -> Result:
        self.case_dir = self.p("cases", f"{index:02d}")
        shutil.rmtree(self.case_dir, ignore_errors=True)
        os.makedirs(self.case_dir)
        start = time.time()
        try:
            return self._run_case(index, case, start)
        except Skip as why:
            return Result(index, case.title, f"(skipped: {why})", 0, False, "no", time.time() - start)
        finally:
            if case.teardown:
                case.teardown(self)

    def _run_case(self, index: int, case: Case, start: float) -> Result:
        if case.setup:
            case.setup(self)
        protected = case.protect(self)
        before = {f: (valid(f), sha(f) if os.path.isfile(f) else None) for f in protected}
        rc, out, err, left = self._execute(case, case.argv(self), dict(self.env, **case.env(self)))
        lines = [l for l in err.splitlines() if l.startswith(ERROR_PREFIXES)]
        shown = lines[-1] if lines else ""
        if left is not None:
            shown = f"{shown or '(killed: no message)'}; left behind: {left} process(es)"
        if case.then is not None:
            follow_case = Case(case.title, case.then, kill_leader_only=case.kill_leader_only)
            rc2, out2, err2, left2 = self._execute(follow_case, case.then(self), self.env)
            follow = re.search(case.expect, out2 + err2) if case.expect else None
            shown = (f"{shown or '(killed: no message)'}; then --resume: exit {rc2}"
                     + (f", WARNING '{follow.group(0)}'" if follow else "")
                     + (f", left behind: {left2} process(es)" if left2 is not None else ""))
            err += err2
        elif not shown and case.expect:
            match = re.search(case.expect, out + err)
            shown = f"WARNING '{match.group(0)}'" if match else "(expected warning not found)"
        lost = [f for f in protected if before[f][0] and not valid(f)]
        return Result(index, case.title, shown or "(no message)", rc, "Traceback (most recent call last)" in err,
                      ", ".join(os.path.relpath(f, self.case_dir) for f in lost) or "no", time.time() - start)

    def _execute(self, case: Case, argv, env):
        """(exit code, stdout, stderr, processes of its group left behind or None when not counted)."""
        command = [case.program, *argv]
        if case.shell_prefix:
            command = ["bash", "-c", case.shell_prefix + " exec " + " ".join(_shell_quote(a) for a in command)]
        # SIGINT back to its default: a survey started in the background (&) passes it on ignored.
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if case.kill_on_tmp:
            # Pipes are drained after the kill: the tiny runs print far less than a pipe holds.
            while proc.poll() is None:
                if glob.glob(self.c("**", case.kill_on_tmp), recursive=True):
                    if case.kill_leader_only:
                        os.kill(proc.pid, case.kill_signal)
                    else:
                        os.killpg(proc.pid, case.kill_signal)
                    break
                time.sleep(0.05)
        out, err = proc.communicate(timeout=900)
        left = _leftovers(proc.pid) if case.kill_leader_only else None
        return proc.returncode, out, err, left


def _shell_quote(text):
    import shlex

    return shlex.quote(text)


# Lines that carry a tool's message ("setup.sh: ERROR: ..." for the set-up script).
ERROR_PREFIXES = ("ERROR: ", "setup.sh: ERROR: ")


def _group_members(pgid: int) -> List[int]:
    """Live (not zombie) processes of the process group ``pgid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
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


def _leftovers(pgid: int, wait_s: float = 20.0) -> int:
    """How many processes of the group still run after ``wait_s`` (then they are killed:
    the survey leaks nothing itself)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _group_members(pgid):
        time.sleep(0.2)
    left = _group_members(pgid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(left)


# ---------------------------------------------------------------------- the cases
def _truncate(path, fraction=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * fraction)])


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)


def _numpy_checkpoint(s, src, dst):
    import numpy as np
    import torch

    data = torch.load(src, map_location="cpu", weights_only=True)
    data["extra_stats"] = np.zeros(3)
    torch.save(data, dst)


def _mgd(s, *opts, run=None, flags=()):
    """An MGD command on the tiny sets with the base plain run as (R18) teacher. Flags come
    before the KEY VALUE options, as Detectron2's parser requires."""
    out = run or s.c("out")
    return s.train_net("--config-file", MGD, *flags, *TINY, *R18_TEACHER, "MGD.TEACHER.WEIGHTS", s.teacher,
                       "OUTPUT_DIR", out, *opts)


def _plain(s, *opts, config=PLAIN, run=None, flags=()):
    return s.train_net("--config-file", config, *flags, *TINY, "OUTPUT_DIR", run or s.c("out"), *opts)


def _run_files(folder):
    return lambda s: [os.path.join(s.c(folder), n) for n in ("model_final.pth", "model_0000000.pth", "last_checkpoint")]


def _slow_save_site(s):
    """A sitecustomize making the second torch.save of the process slow (killed meanwhile)."""
    _write(s.c("site", "sitecustomize.py"), (
        "import os\n"
        "if os.environ.get('MGD_SURVEY_SLOW_SAVE'):\n"
        "    import io, time, torch\n"
        "    real, calls = torch.save, []\n"
        "    def slow(obj, f, *a, **k):\n"
        "        calls.append(1)\n"
        "        if len(calls) < 2 or isinstance(f, (str, os.PathLike)):\n"
        "            return real(obj, f, *a, **k)\n"
        "        buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()\n"
        "        f.write(data[: len(data) // 2]); f.flush()\n"
        "        open(os.environ['MGD_SURVEY_SLOW_SAVE'], 'w').close()  # tells the survey: kill now\n"
        "        time.sleep(600); f.write(data[len(data) // 2:])\n"
        "    torch.save = slow\n"))


def _slow_write_site(s):
    """A sitecustomize making the second torch.save of the process stall *inside torch's
    writer* (its file's write sleeps): a Ctrl-C there reaches Python through torch's C++ code,
    which turns it into a RuntimeError ("unexpected pos") unless handled."""
    _write(s.c("site", "sitecustomize.py"), (
        "import os\n"
        "if os.environ.get('MGD_SURVEY_SLOW_WRITE'):\n"
        "    import time, torch\n"
        "    real, calls = torch.save, []\n"
        "    class SlowFile:\n"
        "        def __init__(self, f):\n"
        "            self.f, self.written = f, 0\n"
        "        def write(self, data):\n"
        "            if self.written > 4096:\n"
        "                open(os.environ['MGD_SURVEY_SLOW_WRITE'], 'w').close()  # tells the survey: interrupt now\n"
        "                time.sleep(600)\n"
        "            self.written += len(data)\n"
        "            return self.f.write(data)\n"
        "        def __getattr__(self, name):\n"
        "            return getattr(self.f, name)\n"
        "    def slow(obj, f, *a, **k):\n"
        "        calls.append(1)\n"
        "        if len(calls) < 2 or isinstance(f, (str, os.PathLike)):\n"
        "            return real(obj, f, *a, **k)\n"
        "        return real(obj, SlowFile(f), *a, **k)\n"
        "    torch.save = slow\n"))


def _folder(s, name, files=()):
    """An image-less folder under the case: ``files`` are (name, bytes)."""
    os.makedirs(s.c(name), exist_ok=True)
    for file_name, data in files:
        with open(s.c(name, file_name), "wb") as f:
            f.write(data)
    return s.c(name)


def _tiny_images(s):
    """A folder of real images: the tiny training split's."""
    return s.p("datasets", "mini_digits_tiny", "train")


def _with_pool(s, entry, *opts):
    """An MGD command training on the tiny split plus the unlabeled set ``entry``."""
    return _mgd(s, "DATASETS.TRAIN", f"('mini_digits_tiny_train', '{entry}')", *opts)


def _mount_tmpfs(s, size="64k"):
    os.makedirs(s.c("disk"), exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", s.c("disk")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise Skip(f"mounting a tmpfs needs root ({' '.join(proc.stderr.split())[:80]})")


def _unmount(s):
    if os.path.ismount(s.c("disk")):
        subprocess.run(["umount", "-l", s.c("disk")], capture_output=True)


def _score_mgd(s, *opts, dataset="mini_digits_pool_tiny"):
    """score_unlabeled.py with the MGD config (its R18 teacher scores) on ``dataset``."""
    return s.score("--config-file", MGD, "--dataset", dataset, *R18_TEACHER, "MODEL.DEVICE", "cpu",
                   "OUTPUT_DIR", s.c("out"), *opts)


def issue22_cases() -> List[Case]:
    """Issue 22: unlabeled folders and keys, score_unlabeled, the new checks, faults."""
    C = Case
    return [
        # ------------------------------------------------------------ unlabeled folders and keys
        C("unlabeled folder missing (MGD.UNLABELED.FOLDERS)",
          lambda s: _mgd(s, "MGD.UNLABELED.FOLDERS", f"('pool:{s.c('nope')}',)",
                         "DATASETS.TRAIN", "('mini_digits_tiny_train', 'pool')")),
        C("unlabeled folder empty", lambda s: _with_pool(s, f"folder:{s.c('empty')}"), setup=lambda s: _folder(s, "empty")),
        C("unlabeled folder of junk only (no image file)", lambda s: _with_pool(s, f"folder:{s.c('junk')}"),
          setup=lambda s: _folder(s, "junk", [("notes.txt", b"hello"), ("scan.pdf", b"%PDF-1.4")])),
        C("unlabeled folder of unreadable images only", lambda s: _with_pool(s, f"folder:{s.c('broken')}"),
          setup=lambda s: _folder(s, "broken", [("a.png", b"not a png"), ("b.jpg", b"not a jpeg")])),
        C("a regular file given as an unlabeled folder", lambda s: _with_pool(s, f"folder:{s.c('photo.png')}"),
          setup=lambda s: _write(s.c("photo.png"), "x")),
        C("MGD.UNLABELED.FOLDERS entry without a path ('pool',)",
          lambda s: _mgd(s, "MGD.UNLABELED.FOLDERS", "('pool',)")),
        C("'folder:' in DATASETS.TRAIN without its folder", lambda s: _with_pool(s, "folder:")),
        C("unlabeled folder named like a labeled set (mini_digits_tiny_val)",
          lambda s: _mgd(s, "MGD.UNLABELED.FOLDERS", f"('mini_digits_tiny_val:{_tiny_images(s)}',)")),
        C("MGD.UNLABELED.TEMPERATURE 0", lambda s: _mgd(s, "MGD.UNLABELED.TEMPERATURE", "0.0")),
        C("MGD.UNLABELED.SAMPLING typo (preferental)", lambda s: _mgd(s, "MGD.UNLABELED.SAMPLING", "preferental")),
        C("MGD.UNLABELED.LABELED_SHARE 1.5", lambda s: _mgd(s, "MGD.UNLABELED.LABELED_SHARE", "1.5")),
        C("an unlabeled folder in DATASETS.TEST", lambda s: _mgd(s, "DATASETS.TEST", f"('folder:{_tiny_images(s)}',)")),
        # ------------------------------------------------------------ score_unlabeled.py
        C("score_unlabeled.py: teacher weights file missing",
          lambda s: _score_mgd(s, "MGD.TEACHER.WEIGHTS", s.c("nope.pth"))),
        C("score_unlabeled.py: plain config with an empty MODEL.WEIGHTS",
          lambda s: s.score("--config-file", PLAIN, "--dataset", "mini_digits_pool_tiny", "MODEL.DEVICE", "cpu",
                            "OUTPUT_DIR", s.c("out"), "MODEL.WEIGHTS", "")),
        C("score_unlabeled.py: --dataset folder: of a regular file",
          lambda s: _score_mgd(s, "MGD.TEACHER.WEIGHTS", s.teacher, dataset=f"folder:{s.c('photo.png')}"),
          setup=lambda s: _write(s.c("photo.png"), "x")),
        # ------------------------------------------------------------ config
        C("MGD.POSITIONS [] (MGD.FACTORS [])", lambda s: _mgd(s, "MGD.POSITIONS", "[]", "MGD.FACTORS", "[]")),
        C("teacher/student INPUT.FORMAT mismatch (teacher L, student BGR)",
          lambda s: _mgd(s, "MGD.TEACHER.OVERRIDES", "['INPUT.FORMAT', 'L']")),
        C("SOLVER.MAX_ITER 0", lambda s: _plain(s, "SOLVER.MAX_ITER", "0")),
        C("OUTPUT_DIR under a regular file", lambda s: _plain(s, run=s.c("file", "out")),
          setup=lambda s: _write(s.c("file"), "x")),
        C("MGD.UPDATE.APPLY_DELAY 5 with MGD.UPDATE.PERIOD 2",
          lambda s: _mgd(s, "MGD.UPDATE.APPLY_DELAY", "5", "MGD.UPDATE.PERIOD", "2", "SOLVER.MAX_ITER", "8")),
        C("MGD.FACTORS with a NaN", lambda s: _mgd(s, "MGD.FACTORS", "[2e-8, 2e-8, nan, 2e-7]")),
        # ------------------------------------------------------------ faults
        C("disk fills up while the run writes logs and metrics (64 KiB tmpfs)",
          lambda s: _plain(s, run=s.c("disk", "run")), setup=_mount_tmpfs, teardown=_unmount),
        C("training diverges: the loss becomes NaN (SOLVER.BASE_LR 1e8)",
          lambda s: _mgd(s, "SOLVER.BASE_LR", "1e8", "SOLVER.MAX_ITER", "6")),
        C("kill -9 of the trainer while the background solver runs (processes left behind)",
          lambda s: _mgd(s, "SOLVER.MAX_ITER", "12", "MGD.UPDATE.PERIOD", "2", "MGD.UPDATE.APPLY_DELAY", "1",
                         run=s.c("run")),
          kill_on_tmp="model_0000001.pth", kill_leader_only=True,
          then=lambda s: _mgd(s, "SOLVER.MAX_ITER", "12", "MGD.UPDATE.PERIOD", "2", "MGD.UPDATE.APPLY_DELAY", "1",
                              run=s.c("run"), flags=["--resume"])),
        C("Ctrl-C (SIGINT) while a checkpoint is being written",
          lambda s: _plain(s, run=s.c("run")), setup=_slow_write_site, kill_on_tmp="slow_write_started",
          kill_signal=signal.SIGINT,
          env=lambda s: {"PYTHONPATH": s.c("site"), "MGD_SURVEY_SLOW_WRITE": s.c("slow_write_started")},
          protect=lambda s: [s.c("run", "model_0000000.pth"), s.c("run", "last_checkpoint")]),
        # ------------------------------------------------------------ export, set-up
        C("export into a missing folder", lambda s: s.export(os.path.join(s.mgd_run, "model_final.pth"),
                                                             s.c("no", "such", "student.pth"))),
        C("scripts/setup.sh with a PYTHON that is not Python (PYTHON=/bin/true)",
          lambda s: [os.path.join(REPO, "scripts", "setup.sh")], program="bash",
          env=lambda s: {"PYTHON": "/bin/true", "MGD_VENV": s.c("venv")}),
    ]


def cases() -> List[Case]:
    return earlier_cases() + issue22_cases()


def earlier_cases() -> List[Case]:
    C = Case
    mgd_files = _run_files("run")
    return [
        # ------------------------------------------------------------ config
        C("--config-file does not exist", lambda s: s.train_net("--config-file", "configs/nope.yaml")),
        C("unknown key on the command line (MGD.NOPE)", lambda s: _plain(s, "MGD.NOPE", "1")),
        C("unknown key inside a YAML file", lambda s: s.train_net("--config-file", s.c("typo.yaml")),
          setup=lambda s: _write(s.c("typo.yaml"), f'_BASE_: "{PLAIN}"\nMGD:\n  REDUCR: "SM"\n')),
        C("int where a float is expected (MGD.LOSS_WEIGHT 1)", lambda s: _mgd(s, "MGD.LOSS_WEIGHT", "1")),
        C("text where an int is expected (MGD.NORM_GROUPS abc)", lambda s: _mgd(s, "MGD.NORM_GROUPS", "abc")),
        C("odd number of command-line options", lambda s: _plain(s, "SOLVER.BASE_LR")),
        C("YAML syntax error", lambda s: s.train_net("--config-file", s.c("bad.yaml")),
          setup=lambda s: _write(s.c("bad.yaml"), "MODEL:\n  DEVICE: [cpu\n")),
        C("_BASE_ file missing", lambda s: s.train_net("--config-file", s.c("child.yaml")),
          setup=lambda s: _write(s.c("child.yaml"), '_BASE_: "Base-Nowhere.yaml"\n')),
        C("MGD.NORM_GROUPS 0", lambda s: _mgd(s, "MGD.NORM_GROUPS", "0")),
        C("MGD.UPDATE.NUM_BATCHES 0", lambda s: _mgd(s, "MGD.UPDATE.NUM_BATCHES", "0")),
        C("negative MGD.LOSS_WEIGHT", lambda s: _mgd(s, "MGD.LOSS_WEIGHT", "-1.0")),
        C("MGD.FACTORS shorter than MGD.POSITIONS", lambda s: _mgd(s, "MGD.FACTORS", "[1e-7, 1e-7]")),
        C("unknown position in MGD.POSITIONS (res9)", lambda s: _mgd(s, "MGD.POSITIONS", "['res2', 'res3', 'res4', 'res9']")),
        C("unknown MGD.REDUCER", lambda s: _mgd(s, "MGD.REDUCER", "MAXPOOL")),
        C("unknown MGD.STUDENT_NORM", lambda s: _mgd(s, "MGD.STUDENT_NORM", "LayerNorm")),
        C("unknown MGD.WEIGHTING", lambda s: _mgd(s, "MGD.WEIGHTING", "constnat")),
        C("MGD.KD.TEMPERATURE 0", lambda s: _mgd(s, "MGD.KD.ENABLED", "True", "MGD.KD.TEMPERATURE", "0.0")),
        C("MGD.TEACHER.OVERRIDES with an odd count", lambda s: _mgd(s, "MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASSES']")),
        C("MGD.TEACHER.OVERRIDES with an unknown key", lambda s: _mgd(s, "MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASES', '3']")),
        C("MGD.TEACHER.CONFIG_FILE does not exist", lambda s: _mgd(s, "MGD.TEACHER.CONFIG_FILE", "teacher_typo.yaml")),
        C("MGD.TEACHER.CONFIG_FILE empty", lambda s: _mgd(s, "MGD.TEACHER.CONFIG_FILE", "")),
        C("SOLVER.IMS_PER_BATCH 0", lambda s: _plain(s, "SOLVER.IMS_PER_BATCH", "0")),
        C("MODEL.DEVICE cuda on a machine without CUDA", lambda s: _plain(s, "MODEL.DEVICE", "cuda")),
        # ------------------------------------------------------------ flags
        C("--eval-only without MODEL.WEIGHTS", lambda s: _plain(s, flags=["--eval-only"])),
        C("--eval-teacher with a plain config", lambda s: _plain(s, flags=["--eval-teacher"])),
        C("a flag after the KEY VALUE options (... OUTPUT_DIR x --resume)", lambda s: _plain(s) + ["--resume"]),
        C("MODEL.WEIGHTS file does not exist", lambda s: _plain(s, "MODEL.WEIGHTS", s.c("nope.pth"))),
        # ------------------------------------------------------------ teacher
        C("teacher not trained yet (first run of an MGD config)",
          lambda s: s.train_net("--config-file", MGD, *TINY, "DATASETS.TRAIN", "('mini_digits_train',)",
                                "MGD.TEACHER.WEIGHTS", "output/survey_teacher/model_final.pth", "OUTPUT_DIR", s.c("out"))),
        C("teacher weights are an MGD checkpoint",
          lambda s: _mgd(s, "MGD.TEACHER.WEIGHTS", os.path.join(s.mgd_run, "model_final.pth"))),
        C("teacher weights truncated", lambda s: _mgd(s, "MGD.TEACHER.WEIGHTS", s.c("teacher.pth")),
          setup=lambda s: (shutil.copy(s.teacher, s.c("teacher.pth")), _truncate(s.c("teacher.pth")))),
        C("teacher weights of another architecture (R50 config, R18 weights)",
          lambda s: _mgd(s, "MGD.TEACHER.CONFIG_FILE", "retinanet_R50_FPN.yaml")),
        C("teacher trained with other classes (student NUM_CLASSES 3)",
          lambda s: _mgd(s, "MODEL.RETINANET.NUM_CLASSES", "3")),
        C("teacher weights hold numpy arrays (weights_only refuses)", lambda s: _mgd(s, "MGD.TEACHER.WEIGHTS", s.c("np.pth")),
          setup=lambda s: _numpy_checkpoint(s, s.teacher, s.c("np.pth"))),
        # ------------------------------------------------------------ checkpoints
        C("MODEL.WEIGHTS truncated", lambda s: _plain(s, "MODEL.WEIGHTS", s.c("w.pth")),
          setup=lambda s: (shutil.copy(s.teacher, s.c("w.pth")), _truncate(s.c("w.pth")))),
        C("MODEL.WEIGHTS valid but holds numpy arrays", lambda s: _plain(s, "MODEL.WEIGHTS", s.c("np.pth")),
          setup=lambda s: _numpy_checkpoint(s, s.teacher, s.c("np.pth")), protect=lambda s: [s.c("np.pth")]),
        C("--resume: last_checkpoint names a truncated file",
          lambda s: _mgd(s, run=s.c("run"), flags=["--resume"]),
          setup=lambda s: (s.copy_run(s.mgd_run), _truncate(s.c("run", "model_final.pth"))),
          protect=lambda s: [s.c("run", "model_0000000.pth")]),
        C("--resume: last_checkpoint deleted, checkpoints present",
          lambda s: _mgd(s, run=s.c("run"), flags=["--resume"]),
          setup=lambda s: (s.copy_run(s.mgd_run), os.remove(s.c("run", "last_checkpoint"))),
          protect=mgd_files, expect=r"--resume: .*last_checkpoint does not exist; resuming from the newest readable checkpoint \S+"),
        C("--resume: folder holds only unreadable checkpoints",
          lambda s: _plain(s, "SOLVER.MAX_ITER", "1", run=s.c("run"), flags=["--resume"]),
          setup=lambda s: _write(s.c("run", "model_0000007.pth"), "garbage"),
          expect=r"--resume: .*no checkpoint in .* is readable[^;]*"),
        C("--resume of an MGD run meets a plain detector checkpoint",
          lambda s: _mgd(s, run=s.c("run"), flags=["--resume"]),
          setup=lambda s: (s.copy_run(s.mgd_run), shutil.copy(s.teacher, s.c("run", "model_0000009.pth")),
                           _write(s.c("run", "last_checkpoint"), "model_0000009.pth")),
          protect=lambda s: [s.c("run", "model_final.pth"), s.c("run", "model_0000009.pth")]),
        C("--resume with MGD.REDUCER AMP -> SP", lambda s: _mgd(s, "MGD.REDUCER", "SP", run=s.c("run"), flags=["--resume"]),
          setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files),
        C("--resume with MGD.REDUCER AMP -> SM", lambda s: _mgd(s, "MGD.REDUCER", "SM", run=s.c("run"), flags=["--resume"]),
          setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files),
        C("--resume with another teacher file",
          lambda s: s.train_net("--config-file", MGD, "--resume", *TINY, *R18_TEACHER, "MGD.TEACHER.WEIGHTS",
                                os.path.join(s.plain_run, "model_0000000.pth"), "OUTPUT_DIR", s.c("run")),
          setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files),
        C("--resume with another student depth (R34)",
          lambda s: _mgd(s, "MODEL.RESNETS.DEPTH", "34", run=s.c("run"), flags=["--resume"]),
          setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files),
        C("--resume of a plain config in an MGD run's folder",
          lambda s: _plain(s, run=s.c("run"), flags=["--resume"]), setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files),
        C("file-size limit hit while saving (ulimit -f)",
          lambda s: _mgd(s, "SOLVER.MAX_ITER", "3", run=s.c("run"), flags=["--resume"]),
          setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files, shell_prefix="ulimit -f 20000;"),
        C("process killed (SIGKILL) in the middle of saving a checkpoint",
          lambda s: _plain(s, run=s.c("run")), setup=_slow_save_site, kill_on_tmp="slow_save_started",
          env=lambda s: {"PYTHONPATH": s.c("site"), "MGD_SURVEY_SLOW_SAVE": s.c("slow_save_started")},
          protect=lambda s: [s.c("run", "model_0000000.pth"), s.c("run", "last_checkpoint")],
          then=lambda s: _plain(s, run=s.c("run"), flags=["--resume"]),
          expect=r"Removed 1 partial file\(s\) left by an interrupted save"),
        # ------------------------------------------------------------ data
        C("DATASETS.TRAIN names an unregistered set", lambda s: _plain(s, "DATASETS.TRAIN", "('my_trian',)")),
        C("DATASETS.COCO_SETS entry without ':' fields", lambda s: _plain(s, "DATASETS.COCO_SETS", "('my_train',)")),
        C("annotation JSON missing", lambda s: _plain(s, *s.own_set("own_missing", "nope.json"))),
        C("image folder missing", lambda s: _plain(s, *s.own_set("own_noimg", "good.json", images="no_images"))),
        C("annotation JSON truncated", lambda s: _plain(s, *s.own_set("own_trunc", "truncated.json"))),
        C("JSON without 'categories'", lambda s: _plain(s, *s.own_set("own_nocat", "no_categories.json"))),
        C("annotation with an unknown category_id", lambda s: _plain(s, *s.own_set("own_cat", "unknown_category.json"))),
        C("bad boxes: no bbox, empty, NaN, negative width, outside, 0.5 px overshoot",
          lambda s: _plain(s, *s.own_set("own_bad", "bad_boxes.json"), "SOLVER.MAX_ITER", "1"),
          expect=r"Data set 'own_bad': [^\n]*"),
        C("every box invalid", lambda s: _plain(s, *s.own_set("own_empty", "all_invalid.json"))),
        C("truncated PNG in the training images",
          lambda s: _plain(s, *s.own_set("own_png", "good.json", images="broken_images"), "SOLVER.MAX_ITER", "8",
                           "SOLVER.IMS_PER_BATCH", "4")),
        C("MODEL.RETINANET.NUM_CLASSES below the data's categories",
          lambda s: _plain(s, "MODEL.RETINANET.NUM_CLASSES", "5")),
        C("--num-gpus 2 with SOLVER.IMS_PER_BATCH 3", lambda s: _plain(s, "SOLVER.IMS_PER_BATCH", "3", flags=["--num-gpus", "2"])),
        C("--num-gpus 2 with an unregistered data set (error printed once)",
          lambda s: _plain(s, "DATASETS.TRAIN", "('my_trian',)", flags=["--num-gpus", "2"])),
        # ------------------------------------------------------------ export
        C("export onto its own input", lambda s: s.export(s.c("run", "model_final.pth"), s.c("run", "model_final.pth")),
          setup=lambda s: s.copy_run(s.mgd_run), protect=mgd_files),
        C("export onto an existing file without --force",
          lambda s: s.export(os.path.join(s.mgd_run, "model_final.pth"), s.c("keep.pth")),
          setup=lambda s: shutil.copy(s.teacher, s.c("keep.pth")), protect=lambda s: [s.c("keep.pth")]),
        C("export verified against the wrong class count",
          lambda s: s.export(os.path.join(s.mgd_run, "model_final.pth"), s.c("keep.pth"), "--force",
                             "--config-file", PLAIN, "MODEL.RETINANET.NUM_CLASSES", "3"),
          setup=lambda s: shutil.copy(s.teacher, s.c("keep.pth")), protect=lambda s: [s.c("keep.pth")]),
        C("export of a plain detector checkpoint", lambda s: s.export(s.teacher, s.c("x.pth"))),
        C("export of a truncated checkpoint", lambda s: s.export(s.c("t.pth"), s.c("x.pth")),
          setup=lambda s: (shutil.copy(os.path.join(s.mgd_run, "model_final.pth"), s.c("t.pth")), _truncate(s.c("t.pth")))),
        C("export with overrides but no --config-file",
          lambda s: s.export(os.path.join(s.mgd_run, "model_final.pth"), s.c("x.pth"), "MODEL.RETINANET.NUM_CLASSES", "3")),
    ]


def markdown(results: List[Result]) -> str:
    rows = ["| # | bad input or fault | what the user sees | exit | traceback on screen | lost |",
            "|---|---|---|---|---|---|"]
    for r in results:
        line = r.line.replace("|", "\\|")
        rows.append(f"| {r.number} | {r.title} | {line} | {r.rc} | {'yes' if r.traceback else 'no'} | {r.lost} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/mgd_bad_input_survey", help="work folder (reused)")
    parser.add_argument("--only", default="", help="comma-separated case numbers (1-based)")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    parser.add_argument("--list", action="store_true", help="print the numbered cases and exit")
    parser.add_argument("--issue22", action="store_true", help="run only the cases added for issue 22")
    args = parser.parse_args(argv)
    all_cases = cases()
    if args.list:
        print("\n".join(f"{n}. {c.title}" for n, c in enumerate(all_cases, 1)))
        return
    first_new = len(earlier_cases()) + 1
    chosen = ([int(x) for x in args.only.split(",") if x]
              or list(range(first_new if args.issue22 else 1, len(all_cases) + 1)))
    survey = Survey(args.work)
    survey.prepare()
    results = []
    for number in chosen:
        case = all_cases[number - 1]
        result = survey.run_case(number, case)
        results.append(result)
        shutil.rmtree(survey.case_dir, ignore_errors=True)
        sys.stderr.write(f"[{number}/{len(all_cases)}] {case.title}: exit {result.rc}, {result.seconds:.0f}s\n")
    table = markdown(results)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
