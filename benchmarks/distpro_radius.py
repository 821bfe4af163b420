"""DistPro's finite-difference hypergradient against the exact (double-backward) one, on a
tiny real detector, for a range of perturbation radii (MGD.DISTPRO.FD_RADIUS).

The detector is the DistPro config on the tiny mini-digits split (64x64 images, batch 2,
R18 teacher and student, fixed seeds); the meta-step is the trainer's own (its loss
functions, the config's gradient clipping), with the virtual step at SOLVER.BASE_LR. Per
training batch it prints the relative norm error ||fd - exact|| / ||exact|| and the cosine.

    python -m benchmarks.distpro_radius --dtype float64 --batches 3
    python -m benchmarks.distpro_radius --dtype float32 --batches 3
    python -m benchmarks.distpro_radius --pathways "['AMP:res4:2e-6', 'KD:1.0']" [--no-hold]

``--pathways`` replaces the config's MGD.PATHWAYS (e.g. with a focal KD pathway, whose detached
focal weight the meta-step holds at w; ``--no-hold`` recomputes it at every probed point, as
before that fix, to show the difference).

``hypergradients`` is also what ``tests/engine/test_distpro_meta_step.py`` checks.
"""
import argparse
import logging
import os
import tempfile
from typing import Dict, Sequence

import torch

RADII = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)
CONFIG = "mgd_retinanet_R50_R18_distpro.yaml"
OPTS = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml", "MGD.DISTPRO.HELDOUT_FRACTION", "0.25"]


def tiny_detector(output_dir: str, teacher_weights: str, dtype=torch.float64, *opts):
    """(trainer, DistPro hook) for the tiny DistPro config, the model cast to ``dtype``."""
    from detectron2.utils.env import seed_all_rng

    from benchmarks.tiny_run import tiny_cfg
    from mgd_det.engine import MGDTrainer
    from mgd_det.engine.distpro import DistProHook

    cfg = tiny_cfg(CONFIG, output_dir, *OPTS, "MGD.TEACHER.WEIGHTS", teacher_weights, *opts, evaluate=False)
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    trainer.unwrapped_model.to(dtype).train()
    hook = next(h for h in trainer._hooks if isinstance(h, DistProHook))
    return trainer, hook


def hypergradients(trainer, hook, batch, heldout, modes: Sequence, hold: bool = True) -> Dict:
    """``{mode: hypergradient (float64 tensor)}`` for ``modes`` ("exact" or a radius), each
    from logits 0 on the same batches, with the hook's loss functions and clipping; ``hold``
    False gives the meta-step a HeldFactors the pathways do not read (factors recomputed)."""
    from mgd_det.matching.held_factors import HeldFactors

    from detectron2.utils.events import EventStorage

    from mgd_det.matching.distpro import MetaWeightStep

    model, weighting = hook.model, hook.weighting
    out = {}
    for mode in modes:
        with torch.no_grad():
            weighting.logits.zero_()
        kind = {"mode": "exact"} if mode == "exact" else {"fd_radius": float(mode)}
        meta = MetaWeightStep(
            model, hook._train_losses, weighting, virtual_lr=trainer.cfg.SOLVER.BASE_LR,
            compute_heldout_losses=hook._heldout_losses, measure_heldout_before=False,
            clipping=hook.meta.clipping, held_factors=model.distiller.held_factors if hold else HeldFactors(), **kind,
        )
        weighting.logits.requires_grad_(True)
        try:
            with EventStorage(0):
                stats = meta.step(batch, heldout)
        finally:
            weighting.logits.requires_grad_(False)
            with torch.no_grad():
                weighting.logits.zero_()
        out[mode] = torch.tensor([stats.hypergradient[n] for n in weighting.names], dtype=torch.float64)
    return out


def errors(fd: torch.Tensor, exact: torch.Tensor):
    """(relative norm error, cosine) of ``fd`` against ``exact``."""
    return float((fd - exact).norm() / exact.norm()), float(fd @ exact / (fd.norm() * exact.norm()))


def batches(trainer, hook, count: int):
    """``count`` (training batch, held-out batch) pairs, uploaded to the model's device."""
    model = hook.model
    loader = iter(trainer.data_loader.loader)  # the inner loader: no DistPro callback
    for k in range(count):
        yield model.upload(next(loader)), model.upload(hook.heldout.batch(k))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--radii", type=float, nargs="+", default=RADII)
    parser.add_argument("--pathways", help="MGD.PATHWAYS instead of the config's, e.g. \"['AMP:res4:2e-6', 'KD:1.0']\"")
    parser.add_argument("--no-hold", action="store_true", help="recompute detached loss factors at the probed points")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    from detectron2.modeling import build_model

    from benchmarks.tiny_run import config_path
    from mgd_det.config import setup_cfg
    from mgd_det.data import ensure_generated

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MGD_DATASETS", os.path.join(tmp, "datasets"))
        for name in ("mini_digits_tiny_train", "mini_digits_tiny_val"):
            ensure_generated(name)
        teacher_cfg = setup_cfg(config_path("retinanet_R18_FPN.yaml"), ["MODEL.DEVICE", "cpu"])
        torch.manual_seed(0)
        teacher = os.path.join(tmp, "teacher.pth")
        torch.save({"model": build_model(teacher_cfg).state_dict()}, teacher)
        opts = ["MGD.PATHWAYS", args.pathways] if args.pathways else []
        trainer, hook = tiny_detector(os.path.join(tmp, "out"), teacher, getattr(torch, args.dtype), *opts)
        print(f"dtype {args.dtype}; pathways {hook.weighting.names}; factors held: {not args.no_hold}; "
              "per radius: relative norm error / cosine against exact mode")
        for k, (batch, heldout) in enumerate(batches(trainer, hook, args.batches)):
            result = hypergradients(trainer, hook, batch, heldout, ["exact", *args.radii], hold=not args.no_hold)
            exact = result.pop("exact")
            cells = [f"{r:g}: {e:.3f}/{c:.4f}" for r, (e, c) in ((r, errors(v, exact)) for r, v in result.items())]
            print(f"batch {k} |exact| {float(exact.norm()):.2e}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
