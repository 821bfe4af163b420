#!/usr/bin/env python
"""The main job: teacher, baseline student and MGD student(s) on the bundled mini digits.

    python tools/distill_mini_digits.py                  # quick: teacher 400 it, students 150 it
    python tools/distill_mini_digits.py --mode full      # the recorded recipe (real numbers)
    python tools/distill_mini_digits.py --mode full --students baseline,AMP,SM,RD,AMP_KD \
        --seeds 0,1,2 --finetune                         # the whole study of docs/BENCHMARKS.md

Runs that already finished (model_final.pth + results in their folder) are reused.
"""
import argparse
import logging
import os
import sys

# benchmarks/ (experiment code) sits beside the package and is not installed with it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.utils.logger import setup_logger

from benchmarks.study import MODES, STUDENT_GROUPS, STUDENTS, markdown_table, run_study


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="quick", choices=sorted(MODES))
    parser.add_argument("--students", default="baseline,AMP",
                        help=f"comma list of {sorted(STUDENTS)} or groups {sorted(STUDENT_GROUPS)}")
    parser.add_argument("--parallel", type=int, default=1,
                        help="independent student runs side by side (e.g. 4 on one GPU)")
    parser.add_argument("--seeds", default="0", help="comma list of seeds, e.g. 0,1,2")
    parser.add_argument("--out-dir", default=None, help="default: output/study_<mode>")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune each baseline student further, with and without MGD")
    args = parser.parse_args()
    out_dir = args.out_dir or os.path.join("output", f"study_{args.mode}")
    os.makedirs(out_dir, exist_ok=True)
    setup_logger(output=os.path.join(out_dir, "study.log"), name="mgd_det")
    summary = run_study(args.mode, args.students.split(","), [int(s) for s in args.seeds.split(",")], out_dir,
                        finetune=args.finetune, parallel=args.parallel)
    table = markdown_table(summary)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    logging.getLogger("mgd_det").info("COCO bbox results on mini_digits_val:\n%s", table)


if __name__ == "__main__":
    main()
