#!/usr/bin/env python
"""The main job: teacher, baseline student and MGD student(s) on the bundled mini digits.

    python tools/distill_mini_digits.py                  # quick: teacher 400 it, students 150 it
    python tools/distill_mini_digits.py --mode full      # the recorded CPU recipe
    python tools/distill_mini_digits.py --mode cpu --group core --parallel 2 \\
        --ledger docs/results/study                      # one group of the CPU study (PROTOCOL.md)

Runs that already finished (model_final.pth + results in their folder) are reused.

The study that accumulates over GPU sessions (docs/BENCHMARKS.md, "The study ledger"): with
--ledger and/or --budget-min, every finished run is recorded in the ledger, runs already in
it (same config hash and seed) are skipped, and only the runs that fit the budget are trained,
the teacher first:

    python tools/distill_mini_digits.py --mode gpu --students baseline,AMP --seeds 0,1,2 \\
        --budget-min 10 --ledger docs/results/study --parallel 4

Trailing KEY VALUE pairs are applied to every run (e.g. MODEL.DEVICE cpu).
"""
import argparse
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

from study.ledger import DEFAULT_LEDGER
from study.runner import MODES, STUDENT_GROUPS, STUDENTS, STUDY_GROUPS, markdown_table, run_study
from study.session import run_budgeted_study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="quick", choices=sorted(MODES))
    parser.add_argument("--students", default=None,
                        help=f"comma list of {sorted(STUDENTS)} or groups {sorted(STUDENT_GROUPS)} "
                             "(default: baseline,AMP, or the --group's)")
    parser.add_argument("--group", default=None, choices=sorted(STUDY_GROUPS),
                        help="one self-contained group of the study (its students, seeds 0,1,2 unless "
                             "--seeds, fine-tuning rows for 'finetune'); e.g. --mode cpu --group core --parallel 2")
    parser.add_argument("--parallel", type=int, default=1,
                        help="independent student runs side by side (e.g. 4 on one GPU)")
    parser.add_argument("--seeds", default=None, help="comma list of seeds, e.g. 0,1,2 (default: 0, or 0,1,2 "
                                                          "with --group)")
    parser.add_argument("--out-dir", default=None, help="default: output/study_<mode>")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune each baseline student further, with and without MGD")
    parser.add_argument("--ledger", default=None,
                        help=f"record runs in this ledger folder and skip those it holds (with --budget-min "
                             f"the default is {os.path.relpath(DEFAULT_LEDGER)})")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="device minutes for this session: only the runs estimated to fit are started")
    parser.add_argument("--s-per-it", type=float, default=None,
                        help="seconds per iteration to assume where the ledger has no run from this device "
                             "(default: 0.35 on a GPU, 3 on a CPU)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs applied to every run")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or os.path.join("output", f"study_{args.mode}")
    os.makedirs(out_dir, exist_ok=True)
    setup_logger(output=os.path.join(out_dir, "study.log"), name="mgd_det")
    setup_logger(output=os.path.join(out_dir, "study.log"), name="study")
    group_students, group_finetune = STUDY_GROUPS[args.group] if args.group else (["baseline", "AMP"], False)
    students = args.students.split(",") if args.students else group_students
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.group else "0")).split(",")]
    args.finetune = args.finetune or group_finetune
    if args.ledger or args.budget_min is not None:
        outcome = run_budgeted_study(args.mode, students, seeds, out_dir, args.ledger or DEFAULT_LEDGER,
                                     budget_min=args.budget_min, finetune=args.finetune, parallel=args.parallel,
                                     extra_opts=args.opts, default_s_per_it=args.s_per_it)
        return 1 if outcome.failed else 0
    summary = run_study(args.mode, students, seeds, out_dir, finetune=args.finetune, parallel=args.parallel,
                        extra_opts=args.opts)
    table = markdown_table(summary)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    logging.getLogger("mgd_det").info("COCO bbox results on mini_digits_val:\n%s", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
