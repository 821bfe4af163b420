#!/usr/bin/env python
"""What DistPro's meta-step costs per iteration: M steps with learned weights (one meta-step +
M steps) against M steps with fixed weights, interleaved in one process (benchmarks/distpro.py).

    python tools/benchmark_distpro.py --out-dir output/bench_distpro MODEL.DEVICE cpu
    python tools/benchmark_distpro.py --reps 3 --out-dir /tmp/d MGD.DISTPRO.PERIOD 20

Writes ``results.json`` and ``results.md`` (the table of docs/BENCHMARKS.md, "DistPro")
into ``--out-dir``. The teacher has random weights unless ``--teacher-weights`` is given.
"""
import argparse
import datetime
import json
import logging
import os
import sys

import mgd_det.data  # noqa: F401  (registers the data sets)
import mgd_det.modeling  # noqa: F401  (registers MGDDistiller)
from benchmarks.distpro import measure_distpro_overhead
from benchmarks.workloads import benchmark_cfg, environment

logger = logging.getLogger("benchmarks")

DEFAULT_CONFIG = "configs/mini_digits/mgd_retinanet_R50_R18_distpro.yaml"


def markdown_row(result, device):
    def med(s, digits=3):
        return f"{s['median']:.{digits}f}"

    ratio = result["ratio_learned_vs_fixed"]
    meta = result["meta_step_in_fixed_steps"]
    return (
        "| M | batch | reps | device | fixed step s | meta-step s | meta-step ÷ fixed step | "
        "learned ÷ fixed, per iteration |\n|---|---|---|---|---|---|---|---|\n"
        f"| {result['period']} | {result['batch_size']} × {result['image_size']}² | {result['reps']} | {device} | "
        f"{med(result['step_seconds_fixed'])} | {med(result['meta_step_seconds'])} | "
        f"{meta['median']:.2f} [{meta['q1']:.2f}–{meta['q3']:.2f}] | "
        f"{ratio['median']:.3f} [{ratio['q1']:.3f}–{ratio['q3']:.3f}] ({ratio['min']:.3f}–{ratio['max']:.3f}) |\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--teacher-weights", default="", help="teacher checkpoint (default: random weights)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = benchmark_cfg(args.config_file, args.opts)
    started = datetime.datetime.now(datetime.timezone.utc)
    result = measure_distpro_overhead(cfg, args.batch_size, args.image_size, args.reps, args.warmup, args.teacher_weights)
    result.update(
        command=" ".join(["python", "tools/benchmark_distpro.py", *(argv if argv is not None else sys.argv[1:])]),
        config_file=args.config_file, device=cfg.MODEL.DEVICE, environment=environment(),
        started_utc=started.isoformat(timespec="seconds"),
        finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(markdown_row(result, cfg.MODEL.DEVICE))
    logger.info("Wrote %s:\n%s", args.out_dir, markdown_row(result, cfg.MODEL.DEVICE))
    return result


if __name__ == "__main__":
    main()
