"""Save and restore what a meta-step's extra forward passes would otherwise change.

- ``BufferSnapshot``: module buffers (BatchNorm running mean/var and ``num_batches_tracked``).
  Every training-mode forward updates them; the meta-step's forwards must not count.
- ``ParameterSnapshot``: trainable parameters, which the meta-step moves to w', w + eps*u and
  w - eps*u in place; restored bitwise with ``copy_`` (same tensors, so optimizers, DDP and
  any other holder of a reference keep seeing the real parameters).
- ``AttributeSnapshot``: the plain attributes of every submodule (numbers, bools, and tensors
  that are neither parameters nor buffers), e.g. RetinaNet's ``loss_normalizer`` EMA, which a
  training-mode forward updates -- or creates, on a detector's first forward. ``restore()``
  puts the values back and deletes the attributes created since, so the meta-step neither
  starts that EMA for training nor lets one of its forwards see another's update.
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


_PLAIN_VALUES = (bool, int, float)


class AttributeSnapshot:
    """The plain attributes of ``module`` and its submodules, restorable (see the module doc).

    Numbers and bools are saved by value; tensors (a parameter or buffer never appears in a
    module's ``__dict__``) by a detached copy, written back into the same tensor object. Other
    values (submodules, configs, lists) are left alone: a forward does not replace them.
    """

    def __init__(self, module: nn.Module):
        self._saved = []
        for owner in module.modules():
            attributes = vars(owner)
            values = {
                name: (value, value.detach().clone() if isinstance(value, torch.Tensor) else None)
                for name, value in attributes.items()
                if isinstance(value, (torch.Tensor,) + _PLAIN_VALUES)
            }
            self._saved.append((owner, frozenset(attributes), values))

    @torch.no_grad()
    def restore(self) -> None:
        for owner, names, values in self._saved:
            attributes = vars(owner)
            for name in [name for name in attributes if name not in names]:
                del attributes[name]  # created since the snapshot
            for name, (value, copy) in values.items():
                if copy is not None:
                    value.copy_(copy)
                attributes[name] = value


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


class ForwardStart:
    """What every forward of one meta-step starts from: the random state (``RngReplay``) and the
    modules' plain attributes (``AttributeSnapshot``). ``reset()`` before each forward (same
    draws, same EMA state at every point) and once at the end (nothing survives the step)."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.rng = RngReplay(device)
        self.attributes = AttributeSnapshot(module)

    def reset(self) -> None:
        self.rng.reset()
        self.attributes.restore()
