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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "mini_digits")
METRICS = ("AP", "AP50", "AP75")

# Students of a study: name -> config file (all share the R18 student and its schedule).
STUDENTS = {
    "baseline": "retinanet_R18_FPN.yaml",
    "AMP": "mgd_retinanet_R50_R18_AMP.yaml",
    "SM": "mgd_retinanet_R50_R18_SM.yaml",
    "RD": "mgd_retinanet_R50_R18_RD.yaml",
    "SP": "mgd_retinanet_R50_R18_SP.yaml",
    "AMP_KD": "mgd_retinanet_R50_R18_AMP_KD.yaml",
}
TEACHER = "retinanet_R50_FPN.yaml"


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

    def solver_opts(self, iters: Optional[int]) -> List[str]:
        if iters is None:
            return []
        steps = f"({int(iters * 2 / 3)}, {int(iters * 8 / 9)})"
        warmup = min(100, iters // 4)
        lr = [] if self.student_lr is None else ["SOLVER.BASE_LR", str(self.student_lr)]
        return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", str(warmup),
                *self._batch_opts(), *lr]

    def finetune_opts(self, student_weights: str) -> List[str]:
        iters = self.finetune_iters
        return ["MODEL.WEIGHTS", student_weights, "SOLVER.MAX_ITER", str(iters), "SOLVER.BASE_LR",
                str(self.finetune_lr), "SOLVER.STEPS", f"({int(iters * 2 / 3)},)", "SOLVER.WARMUP_ITERS",
                str(min(20, iters // 5)), *self._batch_opts()]

    def _batch_opts(self) -> List[str]:
        return [] if self.batch is None else ["SOLVER.IMS_PER_BATCH", str(self.batch)]


MODES = {
    # A few minutes per run on 2 CPU cores: short teacher, short students, half batches.
    "quick": Schedule(teacher_iters=400, student_iters=150, batch=8, finetune_iters=50),
    # The recorded study: the teacher's config recipe (1,200 iterations, lr 0.02), students
    # 200 iterations at batch 16 and lr 0.02 (1.6 epochs; what 15 student runs cost in one
    # session on 2 cores), fine-tuning 100 more iterations at lr 0.002.
    "full": Schedule(student_iters=200, batch=16, student_lr=0.02, finetune_iters=100),
}

# The fine-tuning rows: name -> (config, distils from the teacher), both started from a
# finished baseline student.
FINETUNES = {
    "finetune_plain": ("retinanet_R18_FPN.yaml", False),
    "finetune_MGD_AMP": ("mgd_finetune_retinanet_R50_R18_AMP.yaml", True),
}


def read_final_metrics(output_dir: str) -> Dict[str, float]:
    """The last evaluation's bbox AP/AP50/AP75 from Detectron2's metrics.json."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    found = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "bbox/AP" in record:
                found = {m: record[f"bbox/{m}"] for m in METRICS}
    return found


def run_training(config: str, output_dir: str, opts: Sequence[str], log_name: str = "run.log") -> Dict[str, float]:
    """Train + evaluate one config in a child process unless its results already exist."""
    if os.path.isfile(os.path.join(output_dir, "model_final.pth")):
        metrics = read_final_metrics(output_dir)
        if metrics:
            logger.info("Reusing %s (AP %.2f)", output_dir, metrics["AP"])
            return metrics
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
           "OUTPUT_DIR", output_dir, *opts]
    logger.info("Running: %s", " ".join(cmd))
    with open(os.path.join(output_dir, log_name), "w") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"Training failed ({config}); see {os.path.join(output_dir, log_name)}")
    metrics = read_final_metrics(output_dir)
    if not metrics:
        raise RuntimeError(f"No evaluation results in {output_dir}/metrics.json")
    return metrics


def summarize(per_seed: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean and sample std of each metric over seeds, plus every seed's AP (in seed order)."""
    out = {"AP_per_seed": [r["AP"] for r in per_seed]}
    for m in METRICS:
        values = [r[m] for r in per_seed]
        out[m] = statistics.mean(values)
        out[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["seeds"] = len(per_seed)
    return out


def run_study(mode: str, students: Sequence[str], seeds: Sequence[int], out_root: str,
              finetune: bool = False) -> Dict[str, dict]:
    """Train the teacher once, then every student for every seed; returns the summary.

    With ``finetune``, each seed's baseline student is also trained further with and without
    MGD (the rows of ``FINETUNES``); this needs "baseline" among ``students``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
    unknown = [s for s in students if s not in STUDENTS]
    if unknown:
        raise ValueError(f"unknown students {unknown}; choose from {sorted(STUDENTS)}")
    if finetune and "baseline" not in students:
        raise ValueError("the fine-tuning rows start from the baseline students: add 'baseline' to the students")
    schedule = MODES[mode]
    teacher_dir = os.path.join(out_root, "teacher_R50")
    teacher = run_training(os.path.join(CONFIGS, TEACHER), teacher_dir,
                           schedule.solver_opts(schedule.teacher_iters) + ["SEED", "0"])
    teacher_opts = ["MGD.TEACHER.WEIGHTS", os.path.join(teacher_dir, "model_final.pth")]
    summary = {"teacher_R50": summarize([teacher])}
    for student in students:
        runs = []
        for seed in seeds:
            opts = schedule.solver_opts(schedule.student_iters) + ["SEED", str(seed)]
            if student != "baseline":
                opts += teacher_opts
            run_dir = os.path.join(out_root, f"student_R18_{student}_seed{seed}")
            runs.append(run_training(os.path.join(CONFIGS, STUDENTS[student]), run_dir, opts))
        summary[f"student_R18_{student}"] = summarize(runs)
    for name, (config, distils) in (FINETUNES.items() if finetune else ()):
        runs = []
        for seed in seeds:
            baseline = os.path.join(out_root, f"student_R18_baseline_seed{seed}", "model_final.pth")
            opts = schedule.finetune_opts(baseline) + ["SEED", str(seed)]
            if distils:
                opts += teacher_opts
            runs.append(run_training(os.path.join(CONFIGS, config), os.path.join(out_root, f"{name}_seed{seed}"), opts))
        summary[f"student_R18_{name}"] = summarize(runs)
    with open(os.path.join(out_root, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


def markdown_table(summary: Dict[str, dict]) -> str:
    lines = ["| model | seeds | AP | AP50 | AP75 | AP per seed |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        cells = [f"{s[m]:.2f} ± {s[m + '_std']:.2f}" if s["seeds"] > 1 else f"{s[m]:.2f}" for m in METRICS]
        per_seed = ", ".join(f"{ap:.2f}" for ap in s.get("AP_per_seed", []))
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)
