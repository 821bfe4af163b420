"""Per-iteration losses of a short fixed-seed training run, to compare two versions of the code.

    python -m benchmarks.loss_trace OUT_DIR [--config mgd_retinanet_R50_R18_AMP.yaml] [--iters 20]
    python -m benchmarks.loss_trace --compare A/losses.json B/losses.json

Trains on the tiny mini digits split (64x64, batch 2, CPU, one thread) from a fixed-seed
random teacher, re-solving the assignment every 8 iterations, and writes every iteration's raw
losses to OUT_DIR/losses.json. ``--compare`` prints the largest relative difference between two
traces (the pathway redesign was checked this way: 0 over 20 iterations, with and without KD).
"""
import argparse
import json
import logging
import os
import sys

logger = logging.getLogger(__name__)


def trace(out_dir: str, config: str, iters: int) -> list:
    import torch
    from detectron2.engine import HookBase
    from detectron2.modeling import build_model

    from mgd_det.config import setup_cfg
    from mgd_det.data import ensure_generated
    from mgd_det.engine import MGDTrainer

    torch.set_num_threads(1)
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "mini_digits")
    for name in ("mini_digits_tiny_train", "mini_digits_tiny_val"):
        ensure_generated(name)
    os.makedirs(out_dir, exist_ok=True)
    teacher_cfg = setup_cfg(os.path.join(configs, "retinanet_R50_FPN.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    weights = os.path.join(out_dir, "teacher_seed0.pth")
    torch.save({"model": build_model(teacher_cfg).state_dict()}, weights)
    tiny = ["DATASETS.TRAIN", "('mini_digits_tiny_train',)", "DATASETS.TEST", "()",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
            "MGD.UPDATE.NUM_BATCHES", "2", "MGD.UPDATE.PERIOD", "8", "MGD.UPDATE.APPLY_DELAY", "0",
            "SOLVER.MAX_ITER", str(iters), "SEED", "7", "SOLVER.BASE_LR", "0.01", "MODEL.DEVICE", "cpu",
            "MGD.TEACHER.WEIGHTS", weights, "OUTPUT_DIR", out_dir]
    cfg = setup_cfg(os.path.join(configs, config), tiny)
    cfg.freeze()
    rows = []

    class Record(HookBase):
        def after_step(self):
            storage = self.trainer.storage
            rows.append({k: storage.history(k).latest() for k in sorted(storage.histories()) if k.startswith("loss")})

    trainer = MGDTrainer(cfg)
    trainer.register_hooks([Record()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(out_dir, "losses.json"), "w") as f:
        json.dump(rows, f, indent=0)
    return rows


def compare(path_a: str, path_b: str) -> float:
    a, b = (json.load(open(p)) for p in (path_a, path_b))
    if len(a) != len(b) or any(sorted(x) != sorted(y) for x, y in zip(a, b)):
        raise SystemExit("the traces differ in length or loss names")
    return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b) for k in x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--config", default="mgd_retinanet_R50_R18_AMP.yaml")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.compare:
        logger.info("largest relative difference: %.3g", compare(*args.compare))
        return
    if not args.out_dir:
        parser.error("OUT_DIR is required unless --compare is given")
    trace(args.out_dir, args.config, args.iters)


if __name__ == "__main__":
    sys.exit(main())
