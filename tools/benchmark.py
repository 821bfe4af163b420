#!/usr/bin/env python
"""What MGD costs, measured side by side: step time, assignment update, solver, memory.

    python tools/benchmark.py --mode quick --out-dir output/benchmark_quick
    python tools/benchmark.py --mode full --out-dir output/benchmark_full
    python tools/benchmark.py --mode full --only solver --out-dir /tmp/solver

Writes ``results.json``, ``results.md`` (the tables of docs/BENCHMARKS.md) and
``assignment.npz`` (costs and assignments of the last two updates, for
``tools/plot_assignment.py``) into ``--out-dir``. Every figure is a ratio of workloads run
interleaved in one process (memory: alternating fresh processes); see benchmarks.
The teacher has random weights unless ``--teacher-weights`` is given: costs do not depend
on the weights' values.
"""
import argparse
import datetime
import logging
import os
import sys

import torch

import mgd_det.data  # noqa: F401  (registers the data sets)
import mgd_det.modeling  # noqa: F401  (registers MGDDistiller)
from benchmarks import (
    load_assignment_npz,
    markdown_report,
    measure_solver,
    measure_step_overhead,
    measure_update_cost,
)
from benchmarks.memory import measure_memory
from benchmarks.profile_step import write_results
from benchmarks.update import synthetic_costs
from benchmarks.workloads import DEFAULT_CONFIG, benchmark_cfg, build_models, environment, num_classes, synthetic_batch

logger = logging.getLogger("benchmarks")

PARTS = ("step", "update", "solver", "memory")
# Issue 6 settings (full) and a few-minute version of them (quick).
MODES = {
    "quick": dict(settings=[(2, 128)], reps=3, warmup=2, update_batches=(2, 2, 128), update_data="synthetic",
                  update_reps=2, solver_reps=1, memory_steps=2, memory_reps=1),
    "full": dict(settings=[(4, 256), (2, 512)], reps=10, warmup=2, update_batches=None, update_data="mini_digits",
                 update_reps=5, solver_reps=5, memory_steps=3, memory_reps=2),
}


def parse_settings(text):
    """"4x256,2x512" -> [(4, 256), (2, 512)] (batch size x square image side)."""
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--teacher-weights", default="", help="teacher checkpoint (default: random weights)")
    parser.add_argument("--settings", help="override the step/memory batches, e.g. 4x256,2x512")
    parser.add_argument("--update-batches", help="override the update's K x images x side, e.g. 10x16x128")
    parser.add_argument("--update-data", choices=["synthetic", "mini_digits"], help="override the update's images")
    parser.add_argument("--reps", type=int, help="override the step, update and solver repetitions")
    parser.add_argument("--warmup", type=int, help="override the warm-up repetitions")
    parser.add_argument("--solver-costs", help="assignment.npz of an earlier run: solve its costs")
    parser.add_argument("--memory-reps", type=int, help="override the pairs of memory processes")
    parser.add_argument("--memory-steps", type=int, help="override the training steps per memory process")
    parser.add_argument("--profile", action="store_true", help="also save torch.profiler tables of the MGD step and the update")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def update_batch_sets(cfg, plan, num_sets):
    """``num_sets`` lists of K batches: training images as the hook sees them, or noise."""
    if plan["update_data"] == "mini_digits":
        from mgd_det.engine.assignment_hook import TrackingBatches

        tracking = TrackingBatches(cfg, seed=0)
        return [list(tracking.batches(plan["update_batches"][0], index)) for index in range(num_sets)]
    num_batches, batch_size, size = plan["update_batches"]
    generator = torch.Generator().manual_seed(1)
    return [[synthetic_batch(batch_size, size, num_classes(cfg), generator) for _ in range(num_batches)] for _ in range(num_sets)]


def run(args):
    plan = dict(MODES[args.mode])
    if args.settings:
        plan["settings"] = parse_settings(args.settings)
    if args.update_batches:
        plan["update_batches"] = tuple(int(v) for v in args.update_batches.split("x"))
    if args.update_data:
        plan["update_data"] = args.update_data
    overrides = {"reps": ("reps", "update_reps", "solver_reps"), "warmup": ("warmup",),
                 "memory_reps": ("memory_reps",), "memory_steps": ("memory_steps",)}
    for arg, keys in overrides.items():
        if getattr(args, arg) is not None:
            plan.update({key: getattr(args, arg) for key in keys})
    only = [p for p in args.only.split(",") if p]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        raise SystemExit(f"--only: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    cfg = benchmark_cfg(args.config_file, args.opts)
    if plan["update_batches"] is None:  # the config's own update: NUM_BATCHES batches of IMS_PER_BATCH
        plan["update_batches"] = (cfg.MGD.UPDATE.NUM_BATCHES, cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.MIN_SIZE_TEST)
    os.makedirs(args.out_dir, exist_ok=True)
    results = {
        "mode": args.mode,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python"] + sys.argv),
        "config_file": args.config_file,
        "opts": list(args.opts),
        "teacher_weights": args.teacher_weights,
        "plan": plan,
        "environment": environment(),
    }
    if "step" in only:
        results["step"] = [
            measure_step_overhead(cfg, b, s, plan["reps"], plan["warmup"], args.teacher_weights) for b, s in plan["settings"]
        ]
        if args.profile:
            from benchmarks.step import profile_mgd_step

            b, s = plan["settings"][-1]
            with open(os.path.join(args.out_dir, "profile_step.txt"), "w") as f:
                f.write(profile_mgd_step(cfg, b, s))
    costs = None
    if "update" in only:
        mgd, _ = build_models(cfg, args.teacher_weights)
        sets = update_batch_sets(cfg, plan, plan["update_reps"] + 1)
        update = measure_update_cost(mgd, sets, plan["update_reps"], min(plan["warmup"], 1), os.path.join(args.out_dir, "assignment.npz"))
        costs = update.pop("costs")
        if args.profile:
            from benchmarks.update import profile_update

            with open(os.path.join(args.out_dir, "profile_update.txt"), "w") as f:
                f.write(profile_update(mgd, sets[0]))
        results["update"] = update
        del mgd
    if "solver" in only:
        results["solver_cost_source"] = "tracked in the update measurement" if costs else "synthetic"
        if costs is None and args.solver_costs:
            costs = {p: v["cost"] for p, v in load_assignment_npz(args.solver_costs).items()}
            results["solver_cost_source"] = f"tracked, from {args.solver_costs}"
        results["solver"] = measure_solver(costs or synthetic_costs(), plan["solver_reps"])
    if "memory" in only:
        results["memory"] = [
            measure_memory(args.config_file, args.opts, b, s, plan["memory_steps"], plan["memory_reps"], args.teacher_weights)
            for b, s in plan["settings"]
        ]
    return write_results(args.out_dir, results, markdown_report(results))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return run(get_parser().parse_args(argv))


if __name__ == "__main__":
    main()
