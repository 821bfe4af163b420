"""The teacher's foreground weight of a dense head's anchor, shared by the KD and BOX families.

Dense heads (RetinaNet: a sigmoid per anchor and class) need more than an average over
elements: on a 128x128 image about 3,000 anchors x 10 classes compete with the ~20 anchors
that see an object, so a mean gives a foreground anchor a gradient of ~1/30,000. The KD and
BOX losses normalise by the teacher's *foreground mass* instead (as RetinaNet normalises its
focal loss by the number of foreground anchors): a sum of ``sigmoid(logit / tau)`` of the
teacher, where the foreground temperature ``tau`` < 1 sharpens the teacher's probability
towards the indicator of p >= 0.5 (the KD family sums it over every anchor x class element,
the BOX family over anchors, of each anchor's largest logit). Both divide by the mass
*averaged over processes* (:func:`mean_over_processes`), so a data-parallel run's averaged
gradient is the union batch's, whatever the number of processes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# tau of the foreground weight sigmoid(logit / tau): 1 is the teacher's probability itself,
# 0.1 maps p = 0.3 to 2e-4, p = 0.45 to 0.12, p = 0.55 to 0.88 and p = 0.7 to 1: close to the
# indicator of p >= 0.5 (the anchors the teacher calls objects), yet smooth.
FOREGROUND_TEMPERATURE = 0.1


def foreground_weight(teacher_logits: torch.Tensor, temperature: float = FOREGROUND_TEMPERATURE) -> torch.Tensor:
    """sigmoid(logit / temperature) of detached teacher logits (float32), element-wise.

    Applied to the per-anchor maximum over classes it is the anchor's foreground weight;
    summed, the teacher's foreground mass (see the module doc). ``temperature`` > 0 is the
    caller's option, checked where it was set.
    """
    return torch.sigmoid(teacher_logits.detach().float() / temperature)


def mean_over_processes(mass: torch.Tensor) -> torch.Tensor:
    """A detached normaliser averaged over the processes of a distributed run (no host read).

    Each process's loss divides by the *mean* mass, so the average of the processes'
    gradients equals the gradient of the union batch divided by the union's mass, as on one
    process (the normaliser is a detached constant, like RetinaNet's foreground count).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mass
    mass = mass.detach().clone()
    dist.all_reduce(mass)
    return mass / dist.get_world_size()
