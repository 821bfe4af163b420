#!/usr/bin/env python
"""Run ~60 bad inputs and faults through ``tools/train_net.py`` and ``tools/export_student.py``
and tabulate what a user sees.

    python tools/bad_input_survey.py --work /tmp/mgd_survey [--only 9,28] [--markdown out.md]

Every case runs the real command line in a subprocess on the tiny mini digits splits
(generated under ``<work>/datasets``, 64x64 images, 1-2 iterations). Columns: the one line
the user sees (the ``ERROR:`` line, or the WARNING a fault that is handled produces), the
exit code, whether a traceback reached the terminal, and whether anything was lost: a file
that existed and was valid before the case (checkpoints, last_checkpoint, export inputs and
outputs) and is missing or unreadable after it. Base runs are trained once per work folder
(about 2 minutes on 2 cores); the whole survey takes 10-20 minutes.
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
        if case.setup:
            case.setup(self)
        protected = case.protect(self)
        before = {f: (valid(f), sha(f) if os.path.isfile(f) else None) for f in protected}
        start = time.time()
        rc, out, err = self._execute(case, case.argv(self), dict(self.env, **case.env(self)))
        lines = [l for l in err.splitlines() if l.startswith("ERROR: ")]
        shown = lines[-1] if lines else ""
        if case.then is not None:
            rc2, out2, err2 = self._execute(Case(case.title, case.then), case.then(self), self.env)
            follow = re.search(case.expect, out2 + err2) if case.expect else None
            shown = (f"{shown or '(killed: no message)'}; then --resume: exit {rc2}"
                     + (f", WARNING '{follow.group(0)}'" if follow else ""))
            err += err2
        elif not shown and case.expect:
            match = re.search(case.expect, out + err)
            shown = f"WARNING '{match.group(0)}'" if match else "(expected warning not found)"
        lost = [f for f in protected if before[f][0] and not valid(f)]
        return Result(index, case.title, shown or "(no message)", rc, "Traceback (most recent call last)" in err,
                      ", ".join(os.path.relpath(f, self.case_dir) for f in lost) or "no", time.time() - start)

    def _execute(self, case: Case, argv, env):
        command = [sys.executable, *argv]
        if case.shell_prefix:
            command = ["bash", "-c", case.shell_prefix + " exec " + " ".join(_shell_quote(a) for a in command)]
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        if case.kill_on_tmp:
            # Pipes are drained after the kill: the tiny runs print far less than a pipe holds.
            while proc.poll() is None:
                if glob.glob(self.c("**", case.kill_on_tmp), recursive=True):
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        out, err = proc.communicate(timeout=900)
        return proc.returncode, out, err


def _shell_quote(text):
    import shlex

    return shlex.quote(text)


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


def cases() -> List[Case]:
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
    args = parser.parse_args(argv)
    survey = Survey(args.work)
    survey.prepare()
    all_cases = cases()
    chosen = [int(x) for x in args.only.split(",") if x] or list(range(1, len(all_cases) + 1))
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
