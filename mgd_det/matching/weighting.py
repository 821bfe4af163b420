"""Loss weightings: how much each distillation pathway counts.

One weighting sees every pathway's unweighted loss (feature pathways and output KD alike)
and returns the weighted losses; this is the only place where a pathway's loss is scaled.

- :class:`ConstantWeighting` -- fixed weights from the configuration. They are *not* part
  of ``state_dict``: a value fixed in the config always wins over a checkpoint.
- A learned weighting (DistPro, :mod:`mgd_det.matching.learned_weighting`) owns its logits,
  their optimizer and its own checkpoint entry, outside the student's optimizer; the
  configured factors are its scale reference.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Base class: one scalar weight per pathway name; ``forward`` applies them.

    Subclasses set ``self.names`` (the pathways they weight, in a fixed order) and implement
    :meth:`weights`.
    """

    names: Tuple[str, ...] = ()

    def weights(self) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``{name: losses[name] * weight[name]}`` for every pathway; the names must match."""
        if set(losses) != set(self.names):
            raise ValueError(
                f"{type(self).__name__} weights pathways {sorted(self.names)} but got losses for "
                f"{sorted(losses)}"
            )
        weights = self.weights()
        return {name: losses[name] * weights[name] for name in self.names}


class ConstantWeighting(LossWeighting):
    """Fixed weights, e.g. ``ConstantWeighting({"mgd_res2": 2e-7, "kd": 1.0})``.

    The weights live in a non-persistent buffer (they follow device moves but are never
    saved), so loading a checkpoint cannot replace what the configuration says.
    """

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        if not weights:
            raise ValueError("ConstantWeighting needs at least one pathway weight")
        bad = {n: w for n, w in weights.items() if not (math.isfinite(float(w)) and float(w) >= 0)}
        if bad:
            raise ValueError(f"pathway weights must be finite and >= 0; got {bad}")
        self.names = tuple(weights)
        self.register_buffer(
            "values", torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float32),
            persistent=False,
        )

    def weights(self) -> Dict[str, torch.Tensor]:
        return {name: self.values[i] for i, name in enumerate(self.names)}
