"""Teacher → baseline student → MGD students on the bundled data, and their COCO table.

Each run is a separate ``tools/train_net.py`` process (so runs never share state) whose
output folder is reused when it already holds ``model_final.pth`` and evaluation results:
a study can be interrupted and re-run, and a trained teacher is never trained twice.
"""
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from study.ledger import METRICS, device_description, read_evaluations

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "mini_digits")

# Students of a study: name -> config file (all share the R18 student and its schedule).
STUDENTS = {
    "baseline": "retinanet_R18_FPN.yaml",
    "AMP": "mgd_retinanet_R50_R18_AMP.yaml",
    "SM": "mgd_retinanet_R50_R18_SM.yaml",
    "RD": "mgd_retinanet_R50_R18_RD.yaml",
    "SP": "mgd_retinanet_R50_R18_SP.yaml",
    "AMP_KD": "mgd_retinanet_R50_R18_AMP_KD.yaml",
    # Output KD alone (AMP_KD without its feature pathways): what the features add to KD.
    "KD": "mgd_retinanet_R50_R18_KD.yaml",
    # Learned pathway weights (DistPro): the search (weights learned by the meta-step on a
    # held-out share of the training images), its trajectory replayed on the whole training
    # set, and the same six pathways at their configured factors.
    "DistPro": "mgd_retinanet_R50_R18_distpro.yaml",
    "DistPro_replay": "mgd_retinanet_R50_R18_distpro_replay.yaml",
    "DistPro_fixed": "mgd_retinanet_R50_R18_distpro_fixed.yaml",
    # Label-free students (no annotation read): the training images as an unlabeled folder
    # (the reference), the heterogeneous pool by teacher score, and the pool uniformly.
    "LF_train": "mgd_retinanet_R50_R18_labelfree_train.yaml",
    "LF_pool": "mgd_retinanet_R50_R18_labelfree_pool.yaml",
    "LF_pool_uniform": "mgd_retinanet_R50_R18_labelfree_pool_uniform.yaml",
}
# Rows that read a file another study run writes: row -> (config key, the row that writes it,
# the file in that run's folder). The writer is trained once, at the mode's teacher seed.
ROW_INPUTS = {"DistPro_replay": ("MGD.DISTPRO.TRAJECTORY", "DistPro", "distpro_trajectory.json")}
# Config overrides of a row, after the schedule's: the DistPro rows are evaluated every 250
# iterations, so that each has an AP at half its schedule (issue 27's DistPro target).
STUDENT_OPTS = {name: ["TEST.EVAL_PERIOD", "250"] for name in ("DistPro", "DistPro_replay", "DistPro_fixed")}
# Named groups of students for --students.
STUDENT_GROUPS = {"labelfree": ["baseline", "LF_train", "LF_pool", "LF_pool_uniform"]}
# The study's groups (--group): students, and whether the fine-tuning rows belong to it.
# Each is self-contained (its own teacher, trained from the mode's teacher seed, or the one
# already on this machine); the DistPro group's search run comes with its replay row.
STUDY_GROUPS = {
    "core": (["baseline", "AMP"], False),
    "reducers": (["SM", "RD", "SP", "AMP_KD"], False),
    "labelfree": (["LF_train", "LF_pool", "LF_pool_uniform"], False),
    "distpro": (["DistPro_fixed", "DistPro_replay"], False),
    "finetune": (["baseline"], True),
    "kd": (["KD"], False),
}
TEACHER = "retinanet_R50_FPN.yaml"
TEACHER_NAME = "teacher_R50"  # the teacher's row in tables and the ledger


@dataclass
class Schedule:
    """Iterations and batch of one study mode; every student gets the same schedule.

    ``None`` keeps the config files' own recipe. The fine-tuning rows continue a finished
    baseline student for ``finetune_iters`` more iterations at ``finetune_lr``, with and
    without MGD.
    """

    teacher_iters: Optional[int] = None
    student_iters: Optional[int] = None
    batch: Optional[int] = None
    student_lr: Optional[float] = None
    finetune_iters: int = 100
    finetune_lr: float = 0.002
    # TEST.EVAL_PERIOD of the fine-tuning rows (None: ``eval_period``): their AP at a few points.
    finetune_eval_period: Optional[int] = None
    # TEST.EVAL_PERIOD of every run (None: the config's); the ledger keeps every evaluation.
    eval_period: Optional[int] = None
    # The tiny data sets at 64² instead of the bundled ones (smoke runs of the study machinery).
    tiny: bool = False
    # Square input side of every run (None: the configs' 128²), with ``datasets`` of that size.
    input_side: Optional[int] = None
    # The configs' data sets replaced by these (e.g. the 64² sets of the CPU study).
    datasets: Dict[str, str] = field(default_factory=dict)
    # DATALOADER.NUM_WORKERS of every run (None: the configs'); 0 loads in the training
    # process, so a loader process does not compete with the step for the cores.
    loader_workers: Optional[int] = None
    # A pilot: trains on the training images but a held-out slice and is evaluated on that
    # slice (mgd_det/data/train_slices.py), never on the validation split; seeds >= PILOT_MIN_SEED.
    pilot: bool = False
    # SEED of the study's teacher.
    teacher_seed: int = 0

    def solver_opts(self, iters: Optional[int]) -> List[str]:
        if iters is None:
            return self._eval_opts()
        steps = f"({int(iters * 2 / 3)}, {int(iters * 8 / 9)})"
        warmup = min(100, iters // 4)
        lr = [] if self.student_lr is None else ["SOLVER.BASE_LR", str(self.student_lr)]
        return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", str(warmup),
                *self._batch_opts(), *lr, *self._eval_opts()]

    def finetune_opts(self, student_weights: str) -> List[str]:
        iters = self.finetune_iters
        return ["MODEL.WEIGHTS", student_weights, "SOLVER.MAX_ITER", str(iters), "SOLVER.BASE_LR",
                str(self.finetune_lr), "SOLVER.STEPS", f"({int(iters * 2 / 3)},)", "SOLVER.WARMUP_ITERS",
                str(min(20, iters // 5)), *self._batch_opts(), *self._eval_opts(self.finetune_eval_period)]

    def input_opts(self) -> List[str]:
        """KEY VALUE pairs for ``loader_workers`` and ``input_side``, for any config."""
        opts = [] if self.loader_workers is None else ["DATALOADER.NUM_WORKERS", str(self.loader_workers)]
        if self.input_side is not None:
            side = str(self.input_side)
            opts += ["INPUT.MIN_SIZE_TRAIN", f"({side},)", "INPUT.MAX_SIZE_TRAIN", side, "INPUT.MIN_SIZE_TEST",
                     side, "INPUT.MAX_SIZE_TEST", side]
        return opts

    def dataset_name(self, name: str) -> str:
        """The data set this mode uses for a config's ``name``: its own set, then, in a
        pilot, that set's training slice."""
        name = self.datasets.get(name, name)
        if self.pilot and name in PILOT_REFUSED:
            raise ValueError(f"a pilot cannot train on {name!r}: it holds the held-out slice's images "
                             f"(pilots are judged on them); run label-free pilots from the pool")
        return PILOT_DATASETS.get(name, name) if self.pilot else name

    def _eval_opts(self, period: Optional[int] = None) -> List[str]:
        period = period or self.eval_period
        return [] if period is None else ["TEST.EVAL_PERIOD", str(period)]

    def _batch_opts(self) -> List[str]:
        return [] if self.batch is None else ["SOLVER.IMS_PER_BATCH", str(self.batch)]


# Seeds of pilot runs start here; the confirmatory runs use 0, 1, 2.
PILOT_MIN_SEED = 100
# The data sets a pilot uses in place of the study's training and validation sets.
PILOT_DATASETS = {
    "mini_digits_train": "mini_digits_train_fit", "mini_digits_val": "mini_digits_train_holdout",
    "mini_digits64_train": "mini_digits64_train_fit", "mini_digits64_val": "mini_digits64_train_holdout",
}
# Image-only views of whole training splits: a pilot trained on one would see its held-out slice.
PILOT_REFUSED = ("mini_digits_train_images", "mini_digits64_train_images")

# The CPU study's recipe (issue 27; docs/results/study/PROTOCOL.md): the 64² mini digits sets
# (digits as large in pixels as at 128², a quarter of the FLOPs per image), the R50 teacher
# three times the students' iterations (from scratch it learns ~3x more slowly per iteration
# than the R18, pilot 2), students 1,500 iterations at batch 16 (6 epochs of the 4,000
# training images), evaluated every 500; the fine-tuning rows 500 more iterations at lr 0.002,
# evaluated every 125; loading in the training process; the label-free rows
# read the 64² pool (4,000 images, 20% with digits) or the 64² training images as a folder.
_CPU = dict(teacher_iters=4500, student_iters=1500, batch=16, student_lr=0.02, finetune_iters=500,
            finetune_lr=0.002, finetune_eval_period=125, eval_period=500, input_side=64, loader_workers=0,
            datasets={"mini_digits_train": "mini_digits64_train", "mini_digits_val": "mini_digits64_val",
                      "mini_digits_pool": "mini_digits64_pool", "mini_digits_train_images": "mini_digits64_train_images"})

MODES = {
    # A few minutes per run on 2 CPU cores: short teacher, short students, half batches.
    "quick": Schedule(teacher_iters=400, student_iters=150, batch=8, finetune_iters=50),
    # The recorded study: the teacher's config recipe (1,200 iterations, lr 0.02), students
    # 200 iterations at batch 16 and lr 0.02 (1.6 epochs; what 15 student runs cost in one
    # session on 2 cores), fine-tuning 100 more iterations at lr 0.002.
    "full": Schedule(student_iters=200, batch=16, student_lr=0.02, finetune_iters=100),
    # The GPU study (issue 21): students 3,000 iterations at batch 16 (24 epochs of the bundled
    # set), evaluated every 500. The teacher's 3,000 iterations at its config's lr are a
    # placeholder until a recipe clearly stronger than the baseline is found on a GPU.
    "gpu": Schedule(teacher_iters=3000, student_iters=3000, batch=16, student_lr=0.02, finetune_iters=500,
                    eval_period=500),
    # The study on 2 CPU cores: one group (--group) in <= 150 minutes with --parallel 2.
    "cpu": Schedule(**_CPU),
    # Its pilots: the same recipe on the training images but a held-out slice, judged on that slice.
    "cpu_pilot": Schedule(**_CPU, pilot=True, teacher_seed=PILOT_MIN_SEED),
    # The study machinery end to end in seconds on a CPU (tests, gpu_session.sh DRYRUN=1): the
    # tiny data sets, 4 iterations, batch 2. Its numbers mean nothing.
    "smoke": Schedule(teacher_iters=4, student_iters=4, batch=2, finetune_iters=2, tiny=True),
}

# The fine-tuning rows: name -> (config, distils from the teacher), both started from a
# finished baseline student.
FINETUNES = {
    "finetune_plain": ("retinanet_R18_FPN.yaml", False),
    "finetune_MGD_AMP": ("mgd_finetune_retinanet_R50_R18_AMP.yaml", True),
}


def read_final_metrics(output_dir: str) -> Dict[str, float]:
    """The last evaluation's bbox AP/AP50/AP75 from Detectron2's metrics.json ({} if none)."""
    evaluations = read_evaluations(output_dir)
    return {m: evaluations[-1][m] for m in METRICS} if evaluations else {}


WALL_FILE = "wall_seconds.json"


def run_training(config: str, output_dir: str, opts: Sequence[str], log_name: str = "run.log",
                 threads: Optional[int] = None) -> Dict[str, float]:
    """Train + evaluate one config in a child process unless its results already exist.

    ``threads``: the child's torch/OpenMP threads (default: torch's own choice), e.g. one per
    run when two runs share two CPU cores.

    Returns the final bbox metrics and ``wall_s``, the run's wall time (recorded in the run's
    folder, so a reused run reports the time it took when it ran).
    """
    wall_file = os.path.join(output_dir, WALL_FILE)
    if os.path.isfile(os.path.join(output_dir, "model_final.pth")):
        metrics = read_final_metrics(output_dir)
        if metrics:
            logger.info("Reusing %s (AP %.2f)", output_dir, metrics["AP"])
            if os.path.isfile(wall_file):
                with open(wall_file) as f:
                    metrics["wall_s"] = json.load(f)["wall_s"]
            return metrics
    os.makedirs(output_dir, exist_ok=True)
    # Detectron2 appends to metrics.json: a killed earlier attempt's records would mix in.
    stale = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(stale):
        os.remove(stale)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
           "OUTPUT_DIR", output_dir, *opts]
    logger.info("Running: %s", " ".join(cmd))
    start = time.perf_counter()
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(os.path.join(output_dir, log_name), "w") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"Training failed ({config}); see {os.path.join(output_dir, log_name)}")
    metrics = read_final_metrics(output_dir)
    if not metrics:
        raise RuntimeError(f"No evaluation results in {output_dir}/metrics.json")
    with open(wall_file, "w") as f:
        json.dump({"wall_s": wall}, f)
    metrics["wall_s"] = wall
    return metrics


def run_side_by_side(jobs: Sequence[tuple], parallel: int) -> List[Dict[str, float]]:
    """``run_training(*job)`` for every job, ``parallel`` at a time (independent processes:
    several runs share one GPU well when each leaves it partly idle). Results in job order."""
    if parallel <= 1:
        return [run_training(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda job: run_training(*job), jobs))


def expand_students(names: Sequence[str]) -> List[str]:
    """Student names with groups (e.g. "labelfree") replaced by their members, in order."""
    out = []
    for name in names:
        for member in STUDENT_GROUPS.get(name, [name]):
            if member not in out:
                out.append(member)
    return out


def summarize(per_seed: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean and sample std of each metric over seeds, plus every seed's AP (in seed order)."""
    out = {"AP_per_seed": [r["AP"] for r in per_seed]}
    for m in METRICS:
        values = [r[m] for r in per_seed]
        out[m] = statistics.mean(values)
        out[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["seeds"] = len(per_seed)
    walls = [r["wall_s"] for r in per_seed if "wall_s" in r]
    if walls:
        out["wall_s"] = statistics.mean(walls)
    return out


def check_study(mode: str, students: Sequence[str], finetune: bool) -> List[str]:
    """The students with groups expanded, after checking the mode and the names."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
    students = expand_students(students)
    unknown = [s for s in students if s not in STUDENTS]
    if unknown:
        raise ValueError(f"unknown students {unknown}; choose from {sorted(STUDENTS)}")
    if finetune and "baseline" not in students:
        raise ValueError("the fine-tuning rows start from the baseline students: add 'baseline' to the students")
    return students


def check_seeds(mode: str, seeds: Sequence[int]) -> None:
    """Pilots never share a seed with the confirmatory runs (0, 1, 2, ...)."""
    if MODES[mode].pilot and any(s < PILOT_MIN_SEED for s in seeds):
        raise ValueError(f"mode {mode!r} is a pilot: its seeds must be >= {PILOT_MIN_SEED} (got {list(seeds)})")


def run_study(mode: str, students: Sequence[str], seeds: Sequence[int], out_root: str,
              finetune: bool = False, parallel: int = 1, extra_opts: Sequence[str] = ()) -> Dict[str, dict]:
    """Train the teacher once, then every student for every seed; returns the summary.

    With ``finetune``, each seed's baseline student is also trained further with and without
    MGD (the rows of ``FINETUNES``); this needs "baseline" among ``students``. ``parallel``
    runs that many independent student runs side by side; ``extra_opts`` (KEY VALUE pairs) go
    to every run.
    """
    students = check_study(mode, students, finetune)
    logger.info("Study %s on %s: students %s, seeds %s", mode, device_description(), students, list(seeds))
    if MODES[mode].tiny or MODES[mode].input_side or MODES[mode].pilot:
        raise ValueError(f"mode {mode!r} runs only as a budgeted study: add --ledger DIR")
    if any(s in ROW_INPUTS for s in students):
        raise ValueError(f"{sorted(set(students) & set(ROW_INPUTS))} read another run's file: add --ledger DIR")
    schedule = MODES[mode]
    teacher_dir = os.path.join(out_root, "teacher_R50")
    teacher = run_training(os.path.join(CONFIGS, TEACHER), teacher_dir,
                           schedule.solver_opts(schedule.teacher_iters) + ["SEED", "0", *extra_opts])
    teacher_opts = ["MGD.TEACHER.WEIGHTS", os.path.join(teacher_dir, "model_final.pth")]
    summary = {"teacher_R50": summarize([teacher])}
    jobs = {}
    for student in students:
        for seed in seeds:
            opts = schedule.solver_opts(schedule.student_iters) + ["SEED", str(seed), *extra_opts]
            if student != "baseline":
                opts += teacher_opts
            run_dir = os.path.join(out_root, f"student_R18_{student}_seed{seed}")
            jobs[(student, seed)] = (os.path.join(CONFIGS, STUDENTS[student]), run_dir, opts)
    results = dict(zip(jobs, run_side_by_side(list(jobs.values()), parallel)))
    for student in students:
        summary[f"student_R18_{student}"] = summarize([results[(student, seed)] for seed in seeds])
    jobs = {}
    for name, (config, distils) in (FINETUNES.items() if finetune else ()):
        for seed in seeds:
            baseline = os.path.join(out_root, f"student_R18_baseline_seed{seed}", "model_final.pth")
            opts = schedule.finetune_opts(baseline) + ["SEED", str(seed), *extra_opts]
            if distils:
                opts += teacher_opts
            jobs[(name, seed)] = (os.path.join(CONFIGS, config), os.path.join(out_root, f"{name}_seed{seed}"), opts)
    results = dict(zip(jobs, run_side_by_side(list(jobs.values()), parallel)))
    for name in (FINETUNES if finetune else ()):
        summary[f"student_R18_{name}"] = summarize([results[(name, seed)] for seed in seeds])
    with open(os.path.join(out_root, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


def markdown_table(summary: Dict[str, dict]) -> str:
    lines = ["| model | seeds | AP | AP50 | AP75 | AP per seed | wall time per run |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        cells = [f"{s[m]:.2f} ± {s[m + '_std']:.2f}" if s["seeds"] > 1 else f"{s[m]:.2f}" for m in METRICS]
        per_seed = ", ".join(f"{ap:.2f}" for ap in s.get("AP_per_seed", []))
        wall = f"{s['wall_s'] / 60:.1f} min" if "wall_s" in s else "n/a"
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(cells) + f" | {per_seed} | {wall} |")
    return "\n".join(lines)
