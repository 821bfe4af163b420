"""``GradientClipping``: the student optimizer's gradient clipping, inside the virtual step.

The real optimizer step clips the gradient before it moves the weights, so the virtual step
must too: ``w'(a) = w - Xi clip(g(a))`` with ``g = grad_w L_train(w, a)`` and ``Xi`` the
per-parameter learning rates. Without it a step whose gradient is clipped in training (the
bundled configs clip each parameter's gradient to norm 5, which the distillation terms of a
young student exceed) is virtually taken at full length: the lookahead point, and with it the
hypergradient, belongs to a step training never takes.

By the chain rule ``dL_val(w')/da = -(Xi v)^T C (dg/da)`` with ``v = grad L_val(w')`` and ``C``
the Jacobian of ``clip`` at ``g`` (symmetric: the identity where nothing is clipped, a 0/1
mask for clipping by value, ``s (I - g n^T)`` with ``s = c / ||g||`` for clipping by norm).
So the meta-step keeps its form -- a Hessian-vector product along a direction ``u`` -- with
``u = C Xi v`` instead of ``Xi v``; :meth:`GradientClipping.pullback` computes ``C x`` by one
backward through ``clip`` (elementwise work, no model forward).

Semantics follow Detectron2's ``SOLVER.CLIP_GRADIENTS``: ``"value"`` clamps every element to
``[-value, value]``; ``"norm"`` scales *each parameter's* gradient to norm <= value (p-norm
``norm_type``), exactly as ``torch.nn.utils.clip_grad_norm_`` does per parameter (including
its ``1e-6`` guard). Momentum and weight decay of the real optimizer are not part of the
virtual step (a plain SGD step, as in DARTS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch

KINDS = ("value", "norm")


@dataclass(frozen=True)
class GradientClipping:
    """``kind`` "value" or "norm" (per parameter), threshold ``value`` > 0, ``norm_type`` p."""

    kind: str
    value: float
    norm_type: float = 2.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"GradientClipping: kind must be one of {KINDS}; got {self.kind!r}")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"GradientClipping: value must be finite and > 0; got {self.value}")
        if not (self.norm_type >= 1 or math.isinf(self.norm_type)):
            raise ValueError(f"GradientClipping: norm_type must be >= 1 or inf; got {self.norm_type}")

    def clip(self, grads: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The clipped gradients (differentiable, new tensors; the inputs are not modified)."""
        if self.kind == "value":
            return [g.clamp(-self.value, self.value) for g in grads]
        out = []
        for g in grads:
            norm = torch.linalg.vector_norm(g, self.norm_type)
            out.append(g * torch.clamp(self.value / (norm + 1e-6), max=1.0))
        return out

    def pullback(self, grads: Sequence[torch.Tensor], directions: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``C^T x`` for every parameter: the directions pulled back through ``clip`` at ``grads``."""
        with torch.enable_grad():
            inputs = [g.detach().requires_grad_(True) for g in grads]
            pulled = torch.autograd.grad(self.clip(inputs), inputs, grad_outputs=list(directions),
                                         allow_unused=True)
        return [torch.zeros_like(x) if p is None else p.detach() for x, p in zip(directions, pulled)]
