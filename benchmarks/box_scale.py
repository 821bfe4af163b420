"""The BOX loss's gradient on 2 data-parallel processes against one process on their union
batch, with the teacher's foreground mass normalised per process (before) or averaged over
processes (now), on a batch whose two halves differ in how much the teacher sees.

    python -m benchmarks.box_scale

Data-parallel training averages the processes' gradients; a loss divided by its own process's
mass then weighs an image by 1/(its half's mass) instead of 1/(the union's mass): images on the
process where the teacher sees less get a larger gradient. Printed: per image, the ratio of its
gradient's norm on 2 processes to its norm on one process with the union batch. No process group
is started: the per-process normaliser is what each rank computes alone, the averaged one what
``mean_over_processes`` all-reduces (the two-process test is tests/engine/test_loss_scale_distributed.py).
"""
import logging

import torch

from mgd_det.matching import NetOutputs, PathwaySpec, TeacherOutput
from mgd_det.matching.families.box import OutputBoxPathway

logger = logging.getLogger(__name__)

CLASSES = 4


def uneven_batch(seed: int = 0):
    """(student deltas, teacher logits, teacher deltas) of 4 images, 1 anchor x 4 classes per
    cell: the teacher sees objects on 9 cells of images 0 and 1 and on 1 cell of images 2, 3."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.full((4, CLASSES, 6, 6), -6.0)
    logits[:2, 1, :3, :3] = 4.0
    logits[2:, 2, 0, 0] = 4.0
    return (torch.randn(4, 4, 6, 6, generator=gen), logits, torch.randn(4, 4, 6, 6, generator=gen))


def per_image_gradient_norms(averaged: bool):
    """Per image, |grad| on 2 processes (DDP average of the halves) / |grad| on the union."""
    s_deltas, t_logits, t_deltas = uneven_batch()
    box = OutputBoxPathway(PathwaySpec("BOX"), CLASSES)
    union_mass = None

    def grad(index, scale, rank_of_two=False):
        d = s_deltas[index].clone().requires_grad_(True)
        teacher = TeacherOutput({}, [t_logits[index]], [t_deltas[index]])
        loss = box(NetOutputs({}, [t_logits[index]], [d]), teacher, {})
        if averaged and rank_of_two:  # what mean_over_processes gives each rank: the halves' mean mass
            own = box._per_anchor(t_logits[index], t_deltas[index])[0].sum().clamp(min=1.0)
            loss = loss * own / (union_mass / 2)
        (loss * scale).backward()
        return d.grad

    union_mass = box._per_anchor(t_logits, t_deltas)[0].sum()
    union = grad(slice(0, 4), 1.0)
    two = torch.cat([grad(slice(0, 2), 0.5, True), grad(slice(2, 4), 0.5, True)])
    return (two.flatten(1).norm(dim=1) / union.flatten(1).norm(dim=1)).tolist()


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for averaged in (False, True):
        ratios = per_image_gradient_norms(averaged)
        logger.info("mass %-22s per-image gradient, 2 processes / union: %s",
                    "averaged over processes" if averaged else "per process (before)",
                    " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
