"""``LearnedWeighting``: one learnable weight per distillation pathway (DistPro).

Normalisation. With n pathways, logits a_1..a_n and one extra logit fixed at 0::

    w_i = reference_i * n * softmax([a_1, ..., a_n, 0])_i

- The softmax keeps every weight positive and bounded (a weight can never go negative or
  explode to NaN, which hand-tuned divisors of 5e5..5e7 invite), and makes the pathways
  compete for one budget.
- The extra constant logit is a "none of them" outlet: raising it relative to the others
  (i.e. lowering all a_i together) shrinks *all* distillation weights at once, which a plain
  softmax over the n pathways could not express (its weights always sum to one).
- ``reference`` is the configured per-pathway factor (what the constant weighting would use)
  and ``n`` undoes the softmax's 1/n share, so fixed and learned modes start comparable: at
  init (all logits 0) ``w_i = reference_i * n / (n + 1)``, and ``sum_i w_i / reference_i``
  stays in (0, n) for ever.

A single pathway is refused: with one logit the softmax only decides how much of the
reference to keep, the meta-step then learns a global distillation scale, not a weighting.

The weight trajectory is not kept here: the trainer records it
(``mgd_det.engine.distpro.TrajectoryRecord``) and writes it with ``save_trajectory``; the
module's state is only its logits and reference factors (fixed shapes).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from ..weighting import LossWeighting
from ._common import check_names, check_same_names


class LearnedWeighting(LossWeighting):
    """Per-pathway weights ``reference_i * n * softmax([logits, 0])_i``; logits start at 0.

    Args:
        names: the pathways, in a fixed order (the order of ``logits`` and of the trajectory).
        reference: the configured factor of every pathway (finite, > 0).
    """

    def __init__(self, names: Sequence[str], reference: Mapping[str, float]):
        super().__init__()
        names = check_names(names, "LearnedWeighting")
        if len(names) < 2:
            raise ValueError(
                f"learned weighting needs >= 2 pathways; got {list(names)} "
                "(use the constant weighting for a single pathway)"
            )
        check_same_names(names, reference.keys(), "LearnedWeighting reference")
        values = [float(reference[name]) for name in names]
        bad = {n: v for n, v in zip(names, values) if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(
                f"LearnedWeighting: reference factors must be finite and > 0; got {bad} "
                "(a factor of 0 switches a pathway off: leave it out of the pathways instead)"
            )
        self.names = names
        self.logits = nn.Parameter(torch.zeros(len(names)))
        self.register_buffer("reference", torch.tensor(values))

    # -- weights ------------------------------------------------------------------------
    def weight_vector(self) -> torch.Tensor:
        """The n weights as one tensor (differentiable w.r.t. ``logits``), in ``names`` order."""
        outlet = self.logits.new_zeros(1)
        share = torch.softmax(torch.cat([self.logits, outlet]), dim=0)[:-1]
        return self.reference * len(self.names) * share

    def weights(self) -> Dict[str, torch.Tensor]:
        vector = self.weight_vector()
        return {name: vector[i] for i, name in enumerate(self.names)}

    def extra_repr(self) -> str:
        return f"names={list(self.names)}"
