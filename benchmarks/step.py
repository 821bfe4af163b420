"""Item 1: MGD training step ÷ (plain student step + teacher backbone forward)."""
import logging
from typing import Dict

import torch
from detectron2.config import CfgNode

from benchmarks.stats import interleaved_times, profile_table, ratio_summary, summarize
from benchmarks.workloads import (
    TrainStep,
    bare_backbone_forward,
    build_models,
    num_classes,
    synthetic_batch,
    teacher_divisibility,
)

logger = logging.getLogger(__name__)


def measure_step_overhead(
    cfg: CfgNode,
    batch_size: int,
    image_size: int,
    reps: int,
    warmup: int,
    teacher_weights: str = "",
    seed: int = 0,
) -> Dict[str, object]:
    """Three arms on the same batch, interleaved A, B, C, A, B, C, ...

    * ``mgd``: one MGD training step of the wrapper (teacher forward inside);
    * ``student_plus_teacher``: the teacher's backbone+FPN forward under no_grad, then one
      plain student training step — the work MGD cannot avoid;
    * ``student``: the plain student training step alone.

    The plain student starts from the wrapper's student weights. Returns the per-arm time
    summaries and the per-repetition ratios mgd / student_plus_teacher and mgd / student.
    """
    mgd, student = build_models(cfg, teacher_weights, seed)
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(seed))
    mgd_step, student_step = TrainStep(mgd, cfg), TrainStep(student, cfg)
    teacher, divisibility = mgd.teacher, teacher_divisibility(mgd)

    def student_plus_teacher(_rep):
        bare_backbone_forward(teacher, batch, divisibility)
        student_step(batch)

    logger.info("step overhead: batch %d of %dx%d, %d reps (+%d warm-up)", batch_size, image_size, image_size, reps, warmup)
    times = interleaved_times(
        {
            "mgd": lambda _rep: mgd_step(batch),
            "student_plus_teacher": student_plus_teacher,
            "student": lambda _rep: student_step(batch),
        },
        reps,
        warmup,
    )
    return {
        "batch_size": batch_size,
        "image_size": image_size,
        "reps": reps,
        "warmup": warmup,
        "seconds": {name: summarize(values) for name, values in times.items()},
        "raw_seconds": times,
        "ratio_vs_student_plus_teacher": ratio_summary(times["mgd"], times["student_plus_teacher"]),
        "ratio_vs_student": ratio_summary(times["mgd"], times["student"]),
    }


def profile_mgd_step(cfg: CfgNode, batch_size: int, image_size: int, steps: int = 3) -> str:
    """Profiler table of a few MGD steps (after one warm-up step), parts labelled."""
    mgd, _ = build_models(cfg)
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(0))
    step = TrainStep(mgd, cfg)
    step(batch)
    regions = [
        (mgd, "teacher_features", "teacher_features"),
        (mgd.student, "forward", "student_forward"),
        (mgd.distiller, "forward", "distiller_forward"),
    ]
    return profile_table(lambda: [step(batch) for _ in range(steps)], regions)
