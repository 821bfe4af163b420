"""Host-device synchronisations per step, counted by CUDA's sync debug mode.

Three workloads on the same synthetic batch (host tensors, as the data loader yields them):
the plain student training step, the MGD training step (teacher pass + student step +
pathways; finiteness flags on, not read) and one tracking batch of an assignment update.
A step is ``forward -> sum -> backward -> optimizer.step`` with no metric read-back (the
trainer's logging reads are the same for both and are not part of the step).

    python -m benchmarks.sync_count --out sync.json [--batch-size 16 --image-size 128]

On a machine without CUDA it still runs (every count is 0) so that it can be tested.
"""
import argparse
import json
import logging
import warnings
from typing import Callable, Dict

import torch
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from benchmarks.workloads import DEFAULT_CONFIG, benchmark_cfg, build_models, environment, num_classes, synthetic_batch

logger = logging.getLogger(__name__)


def count_syncs(run: Callable[[], None]) -> int:
    """Synchronising CUDA calls made by ``run`` (0 without CUDA)."""
    if not torch.cuda.is_available():
        run()
        return 0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _train_step(model, optimizer, batch) -> Callable[[], None]:
    def step():
        with EventStorage():
            losses = sum(model(batch).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
    return step


def measure(config_file: str, batch_size: int, image_size: int, warmup: int = 2, opts=()) -> Dict[str, object]:
    cfg = benchmark_cfg(config_file, list(opts))
    mgd, student = build_models(cfg)
    mgd.train(), student.train()
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(0))
    student_step = _train_step(student, build_optimizer(cfg, student), batch)
    mgd_step = _train_step(mgd, build_optimizer(cfg, mgd), batch)

    def track():
        mgd.eval()
        try:
            mgd.track_batch(batch)
        finally:
            mgd.train()

    def mgd_step_with_flags():
        mgd.check_finite = True  # what the assignment hook sets on checked iterations
        mgd_step()

    workloads = {"student_step": student_step, "mgd_step": mgd_step_with_flags, "tracking_batch": track}
    mgd.distiller.start_tracking()
    for _ in range(warmup):  # allocator, cuDNN autotuning and lazy inits are not the step's
        for run in workloads.values():
            run()
    counts = {name: count_syncs(run) for name, run in workloads.items()}
    counts["mgd_minus_student"] = counts["mgd_step"] - counts["student_step"]
    return {"config": config_file, "batch_size": batch_size, "image_size": image_size,
            "device": str(cfg.MODEL.DEVICE), "counts": counts, "environment": environment()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = measure(args.config_file, args.batch_size, args.image_size, opts=args.opts)
    logger.info("synchronisations: %s", result["counts"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
