"""Save and restore what a meta-step's extra forward passes would otherwise change.

- ``BufferSnapshot``: module buffers (BatchNorm running mean/var and ``num_batches_tracked``).
  Every training-mode forward updates them; the meta-step's forwards must not count.
- ``ParameterSnapshot``: trainable parameters, which the meta-step moves to w', w + eps*u and
  w - eps*u in place; restored bitwise with ``copy_`` (same tensors, so optimizers, DDP and
  any other holder of a reference keep seeing the real parameters).
- ``RngReplay``: the CPU (and current CUDA device's) random state. Every forward of one
  meta-step starts from the same state, so random transforms (e.g. the random-drop reducer,
  dropout) draw the same numbers at w + eps*u and w - eps*u and the finite difference measures
  the parameter change only; at the end the state is put back, so whether a meta-step ran does
  not change the training run's random stream.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn


class BufferSnapshot:
    """Copies of every buffer of ``module`` (and its submodules), restorable in place."""

    def __init__(self, module: nn.Module):
        self._saved = [
            (owner, name, buf, buf.detach().clone())
            for owner in module.modules()
            for name, buf in owner._buffers.items()
            if buf is not None
        ]

    @torch.no_grad()
    def restore(self) -> None:
        for owner, name, original, saved in self._saved:
            original.copy_(saved)
            if owner._buffers.get(name) is not original:  # a module replaced its buffer
                owner._buffers[name] = original


class ParameterSnapshot:
    """Detached copies of ``params``; ``step`` writes ``saved + scale * direction`` into them."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = list(params)
        self.saved: List[torch.Tensor] = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def step(self, directions: Sequence[torch.Tensor], scales: Sequence[float]) -> None:
        """``p = saved + scales[i] * directions[i]`` per parameter (per-parameter step size)."""
        for p, saved, d, s in zip(self.params, self.saved, directions, scales):
            p.copy_(saved + s * d)

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.saved):
            p.copy_(saved)


class RngReplay:
    """The random state at construction: ``reset()`` returns to it (before each forward)."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda_device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    def reset(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda_device is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)
