"""Pluggable per-pathway loss weighting (constant now; learned, e.g. DistPro, later)."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Base class: ``forward()`` returns one scalar weight tensor per pathway name.

    Subclasses set ``self.names`` (the pathways they weight) and keep their state in
    parameters/buffers so it is checkpointed with the model.
    """

    names: Tuple[str, ...] = ()

    def forward(self) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


class ConstantWeighting(LossWeighting):
    """Fixed weights, e.g. ``ConstantWeighting({"c2": 1.0, "c3": 0.5})``."""

    def __init__(self, factors: Mapping[str, float]):
        super().__init__()
        if not factors:
            raise ValueError("ConstantWeighting needs at least one pathway weight")
        bad = {name: value for name, value in factors.items() if not math.isfinite(float(value))}
        if bad:
            raise ValueError(f"weights must be finite; got {bad}")
        self.names = tuple(factors)
        self.register_buffer(
            "factors",
            torch.tensor([float(factors[name]) for name in self.names], dtype=torch.float32),
        )

    def forward(self) -> Dict[str, torch.Tensor]:
        return {name: self.factors[i] for i, name in enumerate(self.names)}
