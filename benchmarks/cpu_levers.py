"""What each lever of the CPU study recipe buys (issue 27), measured side by side in one run.

    .venv/bin/python -m benchmarks.cpu_levers --reps 6 --out docs/results/cpu_levers.json

Arms, interleaved A, B, C, ... on the same synthetic batch of 16 images with a few boxes:

* ``R18 128`` -- the bundled plain RetinaNet R18-FPN training step at 128² (today's recipe);
* ``R18 <side>`` -- the same step with the input side scaled down (anchors scaled with it);
* ``R18 <side> channels_last`` -- the same, model and input in channels_last;
* ``R18 <side> 1 thread`` -- the same on one thread: if it takes less than twice the 2-thread
  time, two runs side by side (one thread each) beat one run on two threads;
* ``R50 <side>`` -- the teacher's plain training step;
* ``MGD <side>`` -- an MGD-AMP step (teacher forward inside);
* ``teacher fwd <side>`` -- the teacher's backbone forward alone under no_grad: what a
  teacher-feature cache could save per MGD step, at most.

Each arm is a ratio against ``R18 128`` per repetition (benchmarks.stats.ratio_summary).
"""
import argparse
import json
import logging
from typing import Callable, Dict, List

import torch
from detectron2.modeling import build_model

import mgd_det.modeling  # noqa: F401  (registers MGDDistiller)
from mgd_det.atomic_io import atomic_write_text
from benchmarks.stats import interleaved_times, ratio_summary, summarize
from benchmarks.workloads import (
    TrainStep,
    bare_backbone_forward,
    benchmark_cfg,
    build_models,
    environment,
    num_classes,
    synthetic_batch,
    teacher_divisibility,
)

logger = logging.getLogger(__name__)

CONFIG = "configs/mini_digits/mgd_retinanet_R50_R18_AMP.yaml"
TEACHER_CONFIG = "configs/mini_digits/retinanet_R50_FPN.yaml"
BATCH = 16


def size_opts(side: int) -> List[str]:
    """Config overrides for square inputs of ``side`` pixels, anchors scaled from the 128² recipe."""
    scale = side / 128.0
    sizes = [[int(round(s * scale))] for s in (16, 32, 64, 128, 256)]
    return ["INPUT.MIN_SIZE_TRAIN", f"({side},)", "INPUT.MAX_SIZE_TRAIN", str(side), "INPUT.MIN_SIZE_TEST",
            str(side), "INPUT.MAX_SIZE_TEST", str(side), "MODEL.ANCHOR_GENERATOR.SIZES", str(sizes)]


def _step_arm(model, cfg, batch, threads: int = 2, channels_last: bool = False) -> Callable[[int], None]:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = TrainStep(model, cfg)

    def arm(_rep: int) -> None:
        torch.set_num_threads(threads)
        try:
            step(batch)
        finally:
            torch.set_num_threads(2)

    return arm


def measure(side: int, reps: int, warmup: int) -> Dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    cfg128 = benchmark_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    sized = size_opts(side)
    cfg = benchmark_cfg(CONFIG, ["MODEL.DEVICE", "cpu", *sized, "MGD.TEACHER.OVERRIDES", str(sized)])
    classes = num_classes(cfg)
    batch128 = synthetic_batch(BATCH, 128, classes, gen)
    batch = synthetic_batch(BATCH, side, classes, gen)
    _, student128 = build_models(cfg128)
    mgd, student = build_models(cfg)
    _, student_cl = build_models(cfg)
    _, student_1t = build_models(cfg)
    teacher = mgd.teacher
    teacher_cfg = benchmark_cfg(TEACHER_CONFIG, ["MODEL.DEVICE", "cpu", *size_opts(side)])
    torch.manual_seed(0)
    teacher_train = build_model(teacher_cfg)
    div = teacher_divisibility(mgd)
    arms = {
        "R18 128": _step_arm(student128, cfg128, batch128),
        f"R18 {side}": _step_arm(student, cfg, batch),
        f"R18 {side} channels_last": _step_arm(student_cl, cfg, batch, channels_last=True),
        f"R18 {side} 1 thread": _step_arm(student_1t, cfg, batch, threads=1),
        f"R50 {side}": _step_arm(teacher_train, teacher_cfg, batch),
        f"MGD {side}": _step_arm(mgd, cfg, batch),
        f"teacher fwd {side}": lambda _rep: bare_backbone_forward(teacher, batch, div),
    }
    times = interleaved_times(arms, reps, warmup)
    base = times["R18 128"]
    return {
        "batch": BATCH, "side": side, "reps": reps,
        "seconds": {name: summarize(t) for name, t in times.items()},
        "ratio_to_R18_128": {name: ratio_summary(t, base) for name, t in times.items()},
        "images_per_s": {name: BATCH / summarize(t)["median"] for name, t in times.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=64, help="the scaled-down input side")
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    result = {"environment": environment(), **measure(args.side, args.reps, args.warmup)}
    for name, s in result["seconds"].items():
        r = result["ratio_to_R18_128"][name]["median"]
        logger.info("%-28s %.3f s/step  %.1f img/s  ratio to R18 128: %.3f", name, s["median"],
                    result["images_per_s"][name], r)
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
