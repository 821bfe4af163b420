"""Cost of the two-stage output pathways (issue 29): an MGD Mask R-CNN training step with the
RPN, ROI and mask pathways ÷ the same step with the feature pathways only, side by side.

    python -m benchmarks.rcnn_outputs [--batch 8] [--size 128] [--reps 8] [--warmup 2]

Arms (interleaved A, B, C, A, B, C, ... on one synthetic batch, random R50 teacher; costs do
not depend on the weights): ``features`` (MGD-AMP res2..res5, configs/mini_digits/
mgd_mask_rcnn_R50_R18_AMP.yaml), ``+rpn`` (+ RPN_KD, RPN_BOX) and ``+all`` (+ ROI_KD, ROI_BOX,
MASK_KD on MGD.RCNN.ROIS_PER_IMAGE ROIs, the mask heads on at most MASK_ROIS_PER_IMAGE of
them: a random teacher calls ~10/11 of them foreground, so the cap is always full: the worst
case). Prints per-arm medians and the per-repetition ratios
to ``features`` as JSON.
"""
import argparse
import json
import logging

import torch

from benchmarks.stats import interleaved_times, ratio_summary, summarize
from benchmarks.workloads import TrainStep, benchmark_cfg, build_models, num_classes, synthetic_batch

logger = logging.getLogger(__name__)

CONFIG = "configs/mini_digits/mgd_mask_rcnn_R50_R18_AMP.yaml"
FEATURES = ["AMP:res2:2e-7", "AMP:res3:2e-7", "AMP:res4:2e-6", "AMP:res5:2e-6"]
ARMS = {
    "features": FEATURES,
    "+rpn": FEATURES + ["RPN_KD:1.0", "RPN_BOX:1.0"],
    "+all": FEATURES + ["RPN_KD:1.0", "RPN_BOX:1.0", "ROI_KD:1.0", "ROI_BOX:1.0", "MASK_KD:1.0"],
}


def measure(batch_size: int, size: int, reps: int, warmup: int, rois: int) -> dict:
    common = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
              "MGD.RCNN.ROIS_PER_IMAGE", str(rois)]
    steps = {}
    for name, pathways in ARMS.items():
        cfg = benchmark_cfg(CONFIG, common + ["MGD.PATHWAYS", str(pathways)])
        steps[name] = TrainStep(build_models(cfg, seed=0)[0], cfg)
    batch = synthetic_batch(batch_size, size, num_classes(cfg), torch.Generator().manual_seed(0), masks=True)
    times = interleaved_times({name: (lambda _rep, step=step: step(batch)) for name, step in steps.items()},
                              reps, warmup)
    return {
        "batch": f"{batch_size}x{size}x{size}", "rois_per_image": rois, "reps": reps,
        "seconds": {name: summarize(t) for name, t in times.items()},
        "ratio_to_features": {name: ratio_summary(times[name], times["features"]) for name in ARMS if name != "features"},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rois", type=int, default=32, help="MGD.RCNN.ROIS_PER_IMAGE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print(json.dumps(measure(args.batch, args.size, args.reps, args.warmup, args.rois), indent=1))


if __name__ == "__main__":
    main()
