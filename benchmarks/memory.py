"""Item 3: peak resident memory of MGD training vs student training + teacher inference.

Each configuration runs in its own fresh interpreter (``python -m benchmarks.memory``)
so that peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that configuration only:

* ``mgd``: the MGD wrapper (student + frozen teacher + distiller) doing training steps;
* ``baseline``: a plain student doing training steps while a teacher, held in the same
  process, runs its backbone+FPN forward under no_grad on every batch.

Roles alternate (mgd, baseline, mgd, ...) and the ratio is taken per pair.
"""
import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence

logger = logging.getLogger(__name__)

ROLES = ("mgd", "baseline")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """This process's own peak RSS.

    Linux's ``ru_maxrss`` survives ``exec``: a worker started by a parent holding 2 GiB reports
    at least 2 GiB whatever it does itself. ``VmHWM`` belongs to the worker's own address space,
    so it is read first; ``ru_maxrss`` is the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker(role: str, config: str, opts: List[str], batch_size: int, image_size: int, steps: int, teacher_weights: str) -> Dict[str, float]:
    """Build one configuration and train it for ``steps`` steps; memory figures in MiB."""
    import torch

    from benchmarks.workloads import (
        TrainStep,
        bare_backbone_forward,
        benchmark_cfg,
        benchmark_teacher,
        num_classes,
        pair_divisibility,
        synthetic_batch,
    )
    from mgd_det.modeling.meta_arch import MGDDistiller, build_student

    after_import = _rss_mb()
    cfg = benchmark_cfg(config, opts)
    torch.manual_seed(0)
    teacher = benchmark_teacher(cfg, teacher_weights)
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(0))
    if role == "mgd":  # only what each role needs is ever built
        step = TrainStep(MGDDistiller(cfg, teacher=teacher), cfg)
    else:
        student = build_student(cfg)
        divisibility = pair_divisibility(teacher, student)
        student_step = TrainStep(student, cfg)

        def step(batch):
            bare_backbone_forward(teacher, batch, divisibility)
            student_step(batch)

    after_build = _rss_mb()
    for _ in range(steps):
        step(batch)
    return {
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_import_mb": after_import,
        "rss_after_build_mb": after_build,
        "rss_end_mb": _rss_mb(),
    }


def run_worker(role: str, config: str, opts: Sequence[str], batch_size: int, image_size: int, steps: int, teacher_weights: str = "") -> Dict[str, float]:
    """One fresh interpreter for ``role``; returns its memory figures."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "memory.json")
        cmd = [
            sys.executable, "-m", "benchmarks.memory", "--role", role, "--config", config,
            "--batch-size", str(batch_size), "--image-size", str(image_size), "--steps", str(steps),
            "--teacher-weights", teacher_weights, "--out", out, "--opts", *opts,
        ]
        env = dict(os.environ)
        repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ lives there
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {role} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def measure_memory(config: str, opts: Sequence[str], batch_size: int, image_size: int, steps: int, reps: int, teacher_weights: str = "") -> Dict[str, object]:
    """Peak RSS of ``mgd`` ÷ ``baseline``, ``reps`` alternating pairs of fresh processes."""
    from benchmarks.stats import ratio_summary, summarize

    runs: Dict[str, List[Dict[str, float]]] = {role: [] for role in ROLES}
    for rep in range(reps):
        for role in ROLES:
            runs[role].append(run_worker(role, config, opts, batch_size, image_size, steps, teacher_weights))
            logger.info("memory rep %d/%d %s: peak %.0f MiB", rep + 1, reps, role, runs[role][-1]["peak_rss_mb"])
    peaks = {role: [r["peak_rss_mb"] for r in runs[role]] for role in ROLES}
    # Growth above the interpreter with torch and detectron2 imported, for reference.
    above = {role: [r["peak_rss_mb"] - r["rss_after_import_mb"] for r in runs[role]] for role in ROLES}
    return {
        "batch_size": batch_size,
        "image_size": image_size,
        "steps": steps,
        "reps": reps,
        "peak_rss_mb": {role: summarize(v) for role, v in peaks.items()},
        "peak_above_imports_mb": {role: summarize(v) for role, v in above.items()},
        "runs": runs,
        "ratio_peak_rss": ratio_summary(peaks["mgd"], peaks["baseline"]),
        "ratio_peak_above_imports": ratio_summary(above["mgd"], above["baseline"]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Memory worker (run by measure_memory).")
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--teacher-weights", default="")
    parser.add_argument("--out", required=True)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    result = _worker(args.role, args.config, args.opts, args.batch_size, args.image_size, args.steps, args.teacher_weights)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
