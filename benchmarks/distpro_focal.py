"""DistPro's finite-difference hypergradient against the exact one with a focal KD pathway,
with and without the KD focal weight held at the meta-step's base point.

KD weights each element by ``|p_s - p_t|^gamma``, detached: training (and the exact,
double-backward hypergradient) treat it as a constant. The finite difference evaluates the
distillation losses at ``w +- eps u``; recomputing the weight there differentiates through it
as well, so at gamma > 0 it estimates another quantity, whatever the radius. The meta-step
therefore records the weight at w and replays it at the probed points
(:mod:`mgd_det.matching.held_factors`).

The problem is small and smooth (SiLU, float64: no ReLU kinks, so the finite difference is
exact up to O(eps^2) where it estimates the right thing): a two-conv student with a dense
"head" of sigmoid logits (1 anchor x 4 classes per cell), a feature pathway (L2 to a fixed
map) and a KD pathway against fixed teacher logits with a few confident cells.

    python -m benchmarks.distpro_focal

prints, per gamma and per setting, the relative norm error ||fd - exact|| / ||exact|| at
several radii.
"""
import argparse
import logging
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mgd_det.matching.distpro import LearnedWeighting, MetaWeightStep
from mgd_det.matching.families.kd import dense_kd_loss
from mgd_det.matching.held_factors import HeldFactors

logger = logging.getLogger(__name__)

NAMES = ("feat", "kd")
RADII = (1e-2, 1e-3, 1e-4, 1e-5)


class DenseStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.cls = nn.Conv2d(6, 4, 1)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        f1 = F.silu(self.conv1(x))
        f2 = F.silu(self.conv2(f1))
        return f1, self.cls(f2), self.out(f2.mean((2, 3)))


class FocalKDProblem:
    """Student, fixed targets and teacher logits, and the meta-step's loss functions."""

    def __init__(self, gamma: float, seed: int = 0):
        torch.manual_seed(seed)
        self.model = DenseStudent().double()
        gen = torch.Generator().manual_seed(100 + seed)
        self.target = torch.randn(6, 8, 8, generator=gen, dtype=torch.float64)
        teacher = torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64) - 3.0
        teacher[:, 1, 2:5, 2:5] += 6.0  # a few cells the teacher is sure of
        self.teacher = teacher
        self.gamma = gamma
        self.held = HeldFactors()

    def batch(self, seed: int):
        gen = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64),
                "y": torch.randint(0, 3, (4,), generator=gen)}

    def losses(self, batch):
        f1, logits, scores = self.model(batch["x"])
        task = {"ce": F.cross_entropy(scores, batch["y"])}
        distill = {"feat": F.mse_loss(f1, self.target.expand_as(f1)),
                   "kd": dense_kd_loss([logits], [self.teacher], 1.0, focal_gamma=self.gamma, held=self.held)}
        return task, distill

    def hypergradient(self, mode, hold: bool) -> torch.Tensor:
        """The hypergradient from logits 0 at ``mode`` ("exact" or a radius) on fixed batches;
        ``hold`` False gives the meta-step a HeldFactors the loss does not read."""
        weighting = LearnedWeighting(NAMES, {"feat": 1.0, "kd": 1.0}).double()
        kind = {"mode": "exact"} if mode == "exact" else {"fd_radius": float(mode)}
        meta = MetaWeightStep(self.model, self.losses, weighting, virtual_lr=0.1, measure_heldout_before=False,
                              held_factors=self.held if hold else HeldFactors(), **kind)
        stats = meta.step(self.batch(1), self.batch(2))
        return torch.tensor([stats.hypergradient[n] for n in NAMES], dtype=torch.float64)


def relative_errors(gamma: float, radii: Sequence[float] = RADII) -> Dict[str, Dict[float, float]]:
    """``{"held": {radius: error}, "recomputed": {...}}`` against the exact hypergradient."""
    problem = FocalKDProblem(gamma)
    exact = problem.hypergradient("exact", hold=True)
    return {
        setting: {r: float((problem.hypergradient(r, hold) - exact).norm() / exact.norm()) for r in radii}
        for setting, hold in (("held", True), ("recomputed", False))
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=(0.0, 2.0))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    for gamma in args.gammas:
        for setting, errors in relative_errors(gamma).items():
            logger.info("gamma %g, focal weight %-10s relative error by radius: %s", gamma, setting,
                        "  ".join(f"{r:g}: {e:.4f}" for r, e in errors.items()))


if __name__ == "__main__":
    main()
