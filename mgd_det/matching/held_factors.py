"""Detached factors of a loss, held at one point of the parameters while others are probed.

Some losses weight their terms by a factor computed from the student but *detached* (KD's focal
weight ``|p_s - p_t|^gamma``): training differentiates the loss with that factor held constant.
DistPro's finite-difference hypergradient evaluates the distillation losses at ``w +- eps u``;
recomputing the factor there would differentiate through it too, which training never does
(at gamma 2 the finite difference was 150-160 % off the exact hypergradient, whatever the
radius). So the meta-step *records* the factors during its forward at ``w`` and *replays* them
in the perturbed forwards: the difference quotient then sees only what training differentiates.

A loss asks ``held.factor(key, compute)``: outside record/replay it just computes (training is
unchanged), while recording it also keeps the value under ``key``, while replaying it returns
the kept value (computing only keys it never saw).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Hashable, Iterator, Optional

import torch


class HeldFactors:
    """The held factors of one distiller, shared by its pathways (keys name pathway and term)."""

    def __init__(self):
        self._mode: Optional[str] = None
        self._values: Dict[Hashable, torch.Tensor] = {}

    def factor(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self._mode == "replay" and key in self._values:
            return self._values[key]
        value = compute()
        if self._mode == "record":
            self._values[key] = value
        return value

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Forwards inside keep their factors (replacing any kept before)."""
        self._values.clear()
        self._mode = "record"
        try:
            yield
        finally:
            self._mode = None

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Forwards inside reuse the recorded factors; they are dropped afterwards."""
        self._mode = "replay"
        try:
            yield
        finally:
            self._mode = None
            self._values.clear()
