"""Where a training step's time goes, on any device: issue 20's profile and its GPU evidence.

    python -m benchmarks.profile_step --out-dir output/profile_step            # every part
    python -m benchmarks.profile_step --out-dir DIR --only syncs,steps,mapper  # the CPU figures
    python -m benchmarks.profile_step --out-dir DIR --only parallel --parallel 1,2,4,8

Parts (``--only``), each side by side in one process unless said otherwise:

* ``syncs``: synchronising operations per workload (plain step, MGD step, tracking batch) for
  Detectron2's RetinaNet student and BatchedRetinaNet: the CUDA sync-debug count (0 without
  CUDA) and the device-independent aten count (``benchmarks.sync_count``), with their origins.
* ``steps``: seconds and images/s of four arms interleaved on one synthetic host batch:
  ``plain`` (Detectron2's RetinaNet R18), ``batched`` (BatchedRetinaNet), ``mgd`` and
  ``mgd_batched`` (the MGD step with either student). A step is SimpleTrainer's, its metric
  read-back included (``benchmarks.workloads.TrainStep``).
* ``loss``: the dense loss alone (anchor labelling, losses and their backward on fixed head
  outputs), Detectron2's RetinaNet vs BatchedRetinaNet, interleaved.
* ``profile``: torch.profiler over a few steps of each arm: CPU time, CUDA kernel time, kernels
  launched and synchronising runtime calls per step; the op tables go to ``profile_<arm>.txt``.
* ``mapper``: images/s per core (one process, one thread) of the training mapper
  (``FileNamingMapper(DatasetMapper)``) and the tracking mapper on mini digits, and the share
  of it that is decoding the file.
* ``loader``: the recipe's real training loader (``DATALOADER.NUM_WORKERS`` from
  ``--loader-workers``) feeding the ``--worker-model`` step: loader wait vs step time.
* ``parallel``: for each N of ``--parallel``, N independent processes (loader + steps of
  ``--worker-model``, ``--parallel-workers`` loader workers each) started together and measured
  over the same ``--parallel-seconds`` after a barrier: images/s of each and in total.

Writes ``results.json`` and ``results.md`` into ``--out-dir``.
"""
import argparse
import datetime
import glob
import json
import logging
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch

from benchmarks.stats import interleaved_times, summarize
from benchmarks.workloads import DEFAULT_CONFIG, TrainStep, benchmark_cfg, build_models, environment, num_classes, synthetic_batch
from mgd_det.modeling.meta_arch import build_student

logger = logging.getLogger("benchmarks.profile_step")

PARTS = ("syncs", "steps", "loss", "profile", "mapper", "loader", "parallel")
STUDENTS = {"": "RetinaNet", "_batched": "BatchedRetinaNet"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def student_cfg_opts(opts, arch: str) -> List[str]:
    return [*opts, "MGD.STUDENT_META_ARCHITECTURE", arch]


def build_arms(config_file: str, opts) -> Dict[str, TrainStep]:
    """plain, mgd, plain_batched, mgd_batched: TrainSteps with identical initial weights."""
    arms = {}
    for suffix, arch in STUDENTS.items():
        cfg = benchmark_cfg(config_file, student_cfg_opts(opts, arch))
        mgd, student = build_models(cfg)
        arms["plain" + suffix], arms["mgd" + suffix] = TrainStep(student, cfg), TrainStep(mgd, cfg)
    return {name: arms[name] for name in ("plain", "plain_batched", "mgd", "mgd_batched")}


def part_syncs(args) -> Dict:
    from benchmarks.sync_count import measure

    return {arch: measure(args.config_file, args.batch_size, args.image_size, opts=student_cfg_opts(args.opts, arch))
            for arch in STUDENTS.values()}


def part_steps(args, arms, batch) -> Dict:
    times = interleaved_times({name: (lambda _rep, s=step: s(batch)) for name, step in arms.items()},
                              args.reps, args.warmup)
    result = {}
    for name, values in times.items():
        summary = summarize(values)
        result[name] = {"seconds": summary, "images_per_s": args.batch_size / summary["median"], "raw_seconds": values}
    for name in ("plain_batched", "mgd", "mgd_batched"):
        base = "plain" if name != "mgd_batched" else "plain_batched"
        result[f"{name}_vs_{base}"] = summarize([a / b for a, b in zip(times[name], times[base])])
    return result


def _dense_loss_arm(model, batch):
    """label_anchors + losses + their backward of ``model`` on its head's outputs for ``batch``
    (computed once; the timed part is the dense loss alone)."""
    from detectron2.utils.events import EventStorage

    model.train()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        predictions = [[x.detach().requires_grad_() for x in kind] for kind in model.head(features)]
    gt = [x["instances"].to(model.device) for x in batch]

    def run(_rep):
        with EventStorage():
            losses = model.forward_training(images, features, predictions, gt)
        sum(losses.values()).backward()
        _sync()
    return run


def part_loss(args, arms, batch) -> Dict:
    """The dense loss alone (anchor labelling, losses, backward): Detectron2 vs batched."""
    runs = {name: _dense_loss_arm(arms[name].model, batch) for name in ("plain", "plain_batched")}
    times = interleaved_times(runs, args.reps, args.warmup)
    result = {name: {"seconds": summarize(values)} for name, values in times.items()}
    result["plain_batched_vs_plain"] = summarize([a / b for a, b in zip(times["plain_batched"], times["plain"])])
    return result


def part_profile(args, arms, batch) -> Dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    result = {}
    for name, step in arms.items():
        step(batch)
        _sync()
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(args.profile_steps):
                step(batch)
            _sync()
        wall = (time.perf_counter() - start) / args.profile_steps
        events = prof.events()
        device = [e for e in events if e.device_type == DeviceType.CUDA]
        host = [e for e in events if e.device_type == DeviceType.CPU]
        n = args.profile_steps
        result[name] = {
            "wall_s_per_step": wall,
            "cpu_s_per_step": sum(e.self_cpu_time_total for e in host) / n / 1e6,
            "cuda_kernel_s_per_step": sum(e.self_device_time_total for e in device) / n / 1e6,
            "kernels_per_step": len(device) / n,
            "launches_per_step": sum("LaunchKernel" in e.name for e in host) / n,
            "sync_calls_per_step": sum("Synchronize" in e.name for e in host) / n,
            "memcpy_calls_per_step": sum("Memcpy" in e.name for e in host) / n,
        }
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        with open(os.path.join(args.out_dir, f"profile_{name}.txt"), "w") as f:
            f.write(prof.key_averages().table(sort_by=sort, row_limit=40))
    return result


def part_mapper(args) -> Dict:
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data.detection_utils import read_image

    from mgd_det.data.datasets import ensure_dataset_ready
    from mgd_det.data.mapper import FileNamingMapper

    cfg = benchmark_cfg(args.config_file, args.opts)
    name = cfg.DATASETS.TRAIN[0]
    ensure_dataset_ready(name)
    records = DatasetCatalog.get(name)[: args.mapper_images]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    try:
        result = {"dataset": name, "images": len(records)}
        for label, is_train in (("train_mapper", True), ("tracking_mapper", False)):
            mapper = FileNamingMapper(DatasetMapper(cfg, is_train), cfg.DATASETS.TRAIN, cfg.INPUT.FORMAT)
            start = time.perf_counter()
            for record in records:
                mapper(record)
            result[label + "_images_per_s"] = len(records) / (time.perf_counter() - start)
        start = time.perf_counter()
        for record in records:
            read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        result["decode_only_images_per_s"] = len(records) / (time.perf_counter() - start)
        result["decode_share_of_train_mapper"] = result["train_mapper_images_per_s"] / result["decode_only_images_per_s"]
    finally:
        torch.set_num_threads(threads)
    return result


def worker_model(cfg, which: str):
    """The model a loader/parallel run trains: the plain student or the MGD wrapper."""
    if which == "mgd":
        return build_models(cfg)[0]
    torch.manual_seed(0)
    return build_student(cfg)


def loader_cfg(args, workers: int):
    arch = STUDENTS["_batched" if args.worker_batched else ""]
    opts = student_cfg_opts(args.opts, arch) + ["DATALOADER.NUM_WORKERS", str(workers),
                                                "SOLVER.IMS_PER_BATCH", str(args.batch_size)]
    return benchmark_cfg(args.config_file, opts)


def run_loader_steps(cfg, which: str, steps: int = 0, seconds: float = 0.0, warmup: int = 3, barrier=None) -> Dict:
    """Real loader + training steps; per step the time waiting for the batch and the step's."""
    from mgd_det.engine import MGDTrainer

    loader = iter(MGDTrainer.build_train_loader(cfg))
    step = TrainStep(worker_model(cfg, which), cfg)
    for _ in range(warmup):
        step(next(loader))
    if barrier is not None:
        barrier()
    waits, steps_s, images = [], [], 0
    start = time.perf_counter()
    while (steps and len(waits) < steps) or (seconds and time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        step(batch)
        waits.append(t1 - t0)
        steps_s.append(time.perf_counter() - t1)
        images += len(batch)
    elapsed = time.perf_counter() - start
    return {"steps": len(waits), "images": images, "seconds": elapsed, "images_per_s": images / elapsed,
            "loader_wait_s": summarize(waits), "step_s": summarize(steps_s),
            "loader_wait_share": sum(waits) / elapsed}


def part_loader(args) -> Dict:
    return {str(w): run_loader_steps(loader_cfg(args, w), args.worker_model, steps=args.loader_steps)
            for w in args.loader_workers}


def _file_barrier(folder: str, index: int, total: int, timeout: float = 900.0):
    def wait():
        open(os.path.join(folder, f"ready_{index}"), "w").close()
        deadline = time.time() + timeout
        while len(glob.glob(os.path.join(folder, "ready_*"))) < total:
            if time.time() > deadline:
                raise TimeoutError(f"barrier: {total} workers did not all start")
            time.sleep(0.05)
    return wait


def part_parallel(args) -> Dict:
    result = {}
    for n in args.parallel:
        folder = os.path.join(args.out_dir, f"parallel_{n}")
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*")):
            os.remove(stale)
        common = [sys.executable, "-m", "benchmarks.profile_step", "--out-dir", folder, "--worker-total", str(n),
                  "--config-file", args.config_file, "--batch-size", str(args.batch_size),
                  "--worker-model", args.worker_model, "--parallel-seconds", str(args.parallel_seconds),
                  "--loader-workers", str(args.parallel_workers)]
        if not args.worker_batched:
            common.append("--detectron2-student")
        procs = [subprocess.Popen(common + ["--worker-index", str(i), *args.opts], cwd=REPO) for i in range(n)]
        codes = [p.wait() for p in procs]
        runs = []
        for i in range(n):
            path = os.path.join(folder, f"worker_{i}.json")
            runs.append(json.load(open(path)) if os.path.exists(path) else None)
        done = [r for r in runs if r]
        result[str(n)] = {"exit_codes": codes, "per_process_images_per_s": [r["images_per_s"] for r in done],
                          "total_images_per_s": sum(r["images_per_s"] for r in done),
                          "loader_wait_share": [r["loader_wait_share"] for r in done]}
        logger.info("parallel %d: %.1f images/s in total", n, result[str(n)]["total_images_per_s"])
    return result


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    cfg = loader_cfg(args, args.loader_workers[0])
    barrier = _file_barrier(args.out_dir, args.worker_index, args.worker_total)
    out = run_loader_steps(cfg, args.worker_model, seconds=args.parallel_seconds, barrier=barrier)
    with open(os.path.join(args.out_dir, f"worker_{args.worker_index}.json"), "w") as f:
        json.dump(out, f)


def markdown(results: Dict) -> str:
    lines = [f"# profile_step {results['date']}", "", f"`{results['command']}`", "",
             f"device: {results['device']}; {results['environment']}", ""]
    if "syncs" in results:
        lines += ["| student | workload | CUDA sync-debug count | synchronising aten ops |", "|---|---|---|---|"]
        for arch, r in results["syncs"].items():
            for workload in ("student_step", "mgd_step", "tracking_batch", "mgd_minus_student"):
                lines.append(f"| {arch} | {workload} | {r['counts'][workload]} | {r['host_sync_ops'][workload]} |")
        lines.append("")
    if "steps" in results:
        lines += ["| arm | median s/step [q1–q3] | images/s |", "|---|---|---|"]
        for name, r in results["steps"].items():
            if "images_per_s" in r:
                s = r["seconds"]
                lines.append(f"| {name} | {s['median']:.4f} [{s['q1']:.4f}–{s['q3']:.4f}] | {r['images_per_s']:.1f} |")
            else:
                lines.append(f"| {name} (ratio) | {r['median']:.3f} [{r['q1']:.3f}–{r['q3']:.3f}] | |")
        lines.append("")
    if "loss" in results:
        lines += ["| dense loss (label + loss + backward) | median s [q1–q3] |", "|---|---|"]
        for name, r in results["loss"].items():
            r = r.get("seconds", r)
            lines.append(f"| {name} | {r['median']:.5f} [{r['q1']:.5f}–{r['q3']:.5f}] |")
        lines.append("")
    if "profile" in results:
        keys = ["wall_s_per_step", "cpu_s_per_step", "cuda_kernel_s_per_step", "kernels_per_step",
                "launches_per_step", "sync_calls_per_step", "memcpy_calls_per_step"]
        lines += ["| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name, r in results["profile"].items():
            lines.append(f"| {name} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
        lines.append("")
    if "mapper" in results:
        lines += ["mapper (images/s per core): " + json.dumps(results["mapper"]), ""]
    if "loader" in results:
        lines += ["| loader workers | images/s | loader wait share | median step s |", "|---|---|---|---|"]
        for w, r in results["loader"].items():
            lines.append(f"| {w} | {r['images_per_s']:.1f} | {r['loader_wait_share']:.3f} | {r['step_s']['median']:.4f} |")
        lines.append("")
    if "parallel" in results:
        lines += ["| processes | total images/s | per process |", "|---|---|---|"]
        for n, r in results["parallel"].items():
            lines.append(f"| {n} | {r['total_images_per_s']:.1f} | {', '.join(f'{v:.1f}' for v in r['per_process_images_per_s'])} |")
        lines.append("")
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="an MGD config (its student is the plain arm)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--mapper-images", type=int, default=500)
    parser.add_argument("--loader-workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 2, 4])
    parser.add_argument("--loader-steps", type=int, default=30)
    parser.add_argument("--worker-model", choices=["student", "mgd"], default="student")
    parser.add_argument("--detectron2-student", dest="worker_batched", action="store_false",
                        help="loader/parallel parts: Detectron2's RetinaNet instead of BatchedRetinaNet")
    parser.add_argument("--parallel", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--parallel-seconds", type=float, default=30.0)
    parser.add_argument("--parallel-workers", type=int, default=2, help="loader workers of each parallel process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per parallel process")
    parser.add_argument("--worker-index", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--worker-total", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def run(args) -> Dict:
    only = [p for p in args.only.split(",") if p]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        raise SystemExit(f"--only: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    cfg = benchmark_cfg(args.config_file, args.opts)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(["python -m benchmarks.profile_step"] + sys.argv[1:]),
               "device": str(cfg.MODEL.DEVICE) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""),
               "batch": f"{args.batch_size} x {args.image_size}²", "environment": environment()}
    if "syncs" in only:
        results["syncs"] = part_syncs(args)
    if {"steps", "loss", "profile"} & set(only):
        arms = build_arms(args.config_file, args.opts)
        batch = synthetic_batch(args.batch_size, args.image_size, num_classes(cfg), torch.Generator().manual_seed(0))
        if "steps" in only:
            results["steps"] = part_steps(args, arms, batch)
        if "loss" in only:
            results["loss"] = part_loss(args, arms, batch)
        if "profile" in only:
            results["profile"] = part_profile(args, arms, batch)
        del arms
    if "mapper" in only:
        results["mapper"] = part_mapper(args)
    if "loader" in only:
        results["loader"] = part_loader(args)
    if "parallel" in only:
        results["parallel"] = part_parallel(args)
    return write_results(args.out_dir, results, markdown(results))


def write_results(out_dir: str, results: Dict, report: str) -> Dict:
    """``results.json`` and the Markdown ``results.md`` into ``out_dir``; returns ``results``."""
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(report)
    logger.info("wrote %s", os.path.join(out_dir, "results.md"))
    return results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args = get_parser().parse_args(argv)
    if args.worker_index >= 0:
        return run_worker(args)
    return run(args)


if __name__ == "__main__":
    main()
