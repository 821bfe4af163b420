"""Item 1: MGD training step ÷ (plain student step + teacher backbone forward)."""
import logging
from typing import Dict

import torch
from detectron2.config import CfgNode

from mgd_det.benchmark.stats import interleaved_times, ratio_summary, summarize
from mgd_det.benchmark.workloads import (
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


def profile_mgd_step(cfg: CfgNode, batch_size: int, image_size: int, steps: int = 3, row_limit: int = 30) -> str:
    """torch.profiler table (self CPU time) of a few MGD steps, after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    mgd, _ = build_models(cfg)
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(0))
    step = TrainStep(mgd, cfg)
    step(batch)
    _label_regions(mgd, record_function)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("mgd_step"):
                step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def _label_regions(mgd, record_function) -> None:
    """Wrap the wrapper's parts in named profiler ranges (teacher, student, distiller)."""

    def wrap(obj, attr, label):
        fn = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)

        setattr(obj, attr, wrapped)

    wrap(mgd, "teacher_features", "## teacher_features")
    wrap(mgd.student, "forward", "## student_forward")
    wrap(mgd.distiller, "forward", "## distiller_forward")
