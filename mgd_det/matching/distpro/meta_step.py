"""``MetaWeightStep``: DistPro's one-step-lookahead bi-level update of the pathway weights.

Notation: student parameters w, weighting logits a, pathway weights w_i(a), task losses T,
unweighted distillation losses d_i, ``L_train(w, a) = sum T + sum_i w_i(a) d_i`` on a training
batch, ``L_val(w) = sum T`` on a held-out batch (a split of the *training* set).

The weights should make the student that results from training on them good on held-out data.
One step of lookahead (DARTS, Liu et al. 2019) approximates that by

    w'(a) = w - xi * grad_w L_train(w, a)          (virtual SGD step, lr xi)
    dL_val(w'(a))/da = -xi * grad^2_{a,w} L_train(w, a) . v,    v = grad_w' L_val(w')

and the Hessian-vector product is a finite difference of gradients w.r.t. a::

    grad^2_{a,w} L_train . v ~ (grad_a L_train(w + eps v) - grad_a L_train(w - eps v)) / (2 eps)

with ``eps = fd_radius / ||xi v||`` (a perturbation of norm ``fd_radius`` in the step's
direction; see ``fd_radius`` below for the default). Here ``grad_a L_train(x) = J^T d(x)`` with ``J = dw_i/da`` (the
task losses do not depend on a), so the two perturbed points need only *forward* passes of
the distillation losses, then one tiny backward through the weighting. With per-parameter
learning rates (e.g. Detectron2's bias LR factor) ``xi * v`` becomes ``u = Xi v`` and the
difference is taken along u. With gradient clipping in the student's optimizer the virtual
step clips too and u is pulled back through the clipping (``clipping.py``).

There is no first-order mode: DARTS's first-order approximation (xi = 0) drops the second
term and keeps only ``grad_a L_val``, which is exactly zero here because the held-out loss has
no distillation terms. ``mode="exact"`` replaces the finite difference by a double backward
(``-grad_a (u . grad_w L_train)``), exact up to rounding; it is meant for tests and small
students (it keeps the double-backward graph of one training forward).

Side effects, none of which survive the step:
- parameters are moved in place (w', w +- eps u) and restored bitwise;
- BatchNorm running statistics and ``num_batches_tracked`` (all buffers) are restored;
- the global random state and the modules' plain attributes (e.g. RetinaNet's
  ``loss_normalizer`` EMA; attributes a forward creates are deleted) are reset before every
  forward (same draws and state at every point) and restored at the end;
- only ``torch.autograd.grad`` is used, so the student's ``.grad`` fields are never touched;
  the logits' ``.grad`` is put back as it was after the Adam step.
Because parameters are changed in place, call ``step`` outside the trainer's forward/backward
window (before the step's forward, or after its optimizer step), never between them.

A non-finite held-out or training loss (or hypergradient) skips the update: the logits and
Adam's moments keep their values (``MetaStepStats.skipped``), instead of turning NaN for good.

Several processes: every rank computes its hypergradient on its own batches, then the
hypergradient is averaged with ``all_reduce`` before the Adam step, so the logits stay
identical on every rank (the virtual step itself uses the rank's local gradient).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ._common import check_same_names
from ._snapshot import BufferSnapshot, ForwardStart, ParameterSnapshot
from ..held_factors import HeldFactors
from .clipping import GradientClipping
from .learned import LearnedWeighting

logger = logging.getLogger(__name__)

LossDict = Dict[str, torch.Tensor]
ComputeLosses = Callable[[Any], Tuple[LossDict, LossDict]]
MODES = ("finite_difference", "exact")


@dataclass(frozen=True)
class MetaStepStats:
    """What one meta-step measured (host floats, for logging; held-out losses are this rank's).

    ``heldout_before``: L_val at the current student w (None when not measured);
    ``heldout_after``: L_val at w' after the virtual step; ``epsilon``: the finite-difference
    step along u (0 in exact mode or when u = 0); ``weights``: after the Adam update;
    ``skipped``: the update was skipped because a loss or the hypergradient was not finite on
    some rank (the hypergradient is then NaN and the logits did not move).
    """

    hypergradient: Dict[str, float]
    hypergradient_norm: float
    heldout_before: Optional[float]
    heldout_after: float
    train_loss: float
    epsilon: float
    weights: Dict[str, float]
    skipped: bool = False


def _average_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def _finite_on_every_rank(*scalars: torch.Tensor) -> bool:
    """Whether every scalar is finite on every process (one host synchronisation; one
    all-reduce when distributed): the decision that lets all ranks skip the same forwards."""
    finite = torch.isfinite(torch.stack([x.reshape(()).double() for x in scalars])).all().to(torch.int32)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor], **kwargs) -> List[torch.Tensor]:
    """``d loss / d params`` with zeros for parameters the loss does not reach."""
    grads = torch.autograd.grad(loss, params, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class MetaWeightStep:
    """Updates a ``LearnedWeighting``'s logits by the one-step-lookahead hypergradient.

    Args:
        student: the (unwrapped, not DDP) module whose trainable parameters (``requires_grad``;
            the weighting's own logits excluded) take the virtual step.
        compute_losses: ``batch -> (task_losses, distill_losses)``, both ``{name: scalar}``;
            ``distill_losses`` unweighted, keyed by the weighting's names. Runs the student
            in its current mode. It is called up to 4 times on the training batch object and
            once or twice on the held-out one, so it may cache per-batch teacher outputs.
        weighting: the ``LearnedWeighting`` to update.
        lr, betas, weight_decay: the logits' own Adam (never the student's optimizer).
        virtual_lr: xi of the virtual step; None reads each parameter's current LR from
            ``student_optimizer`` at every step (so it follows the LR schedule).
        student_optimizer: read-only source of the LRs; never stepped or modified.
        fd_radius: the finite-difference perturbation has this norm (``eps = fd_radius/||u||``).
            DARTS's 0.01 is far off on a detector, where ReLU and max-pooling kinks make the
            error fall only linearly with the radius (26-72 % relative norm error at 0.01,
            ~1.5 % at 1e-4, in float32 and float64; docs/BENCHMARKS.md §7d); below ~1e-5
            float32 rounding takes over.
        mode: ``"finite_difference"`` (default) or ``"exact"`` (double backward).
        compute_heldout_losses: optional ``batch -> task_losses`` for the held-out batch, to
            skip the teacher and distillation terms there; defaults to ``compute_losses``.
        measure_heldout_before: also evaluate L_val at w (one extra forward) for the stats.
        clipping: the student optimizer's gradient clipping, applied in the virtual step
            (``clipping.py``); None: the optimizer does not clip.
        held_factors: the distiller's :class:`~mgd_det.matching.held_factors.HeldFactors`: the
            detached factors of the losses (KD's focal weight) are recorded at w and replayed at
            ``w +- eps u``, so the finite difference differentiates what training does.
    """

    def __init__(
        self,
        student: nn.Module,
        compute_losses: ComputeLosses,
        weighting: LearnedWeighting,
        *,
        lr: float = 1e-2,
        betas: Tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 0.0,
        virtual_lr: Optional[float] = None,
        student_optimizer: Optional[torch.optim.Optimizer] = None,
        fd_radius: float = 1e-4,
        mode: str = "finite_difference",
        compute_heldout_losses: Optional[Callable[[Any], LossDict]] = None,
        measure_heldout_before: bool = True,
        clipping: Optional[GradientClipping] = None,
        held_factors: Optional[HeldFactors] = None,
    ):
        if isinstance(student, nn.parallel.DistributedDataParallel):
            raise ValueError("MetaWeightStep: pass the unwrapped student (ddp_model.module)")
        if not isinstance(weighting, LearnedWeighting):
            raise TypeError(
                f"MetaWeightStep needs a LearnedWeighting; got {type(weighting).__name__}"
            )
        if mode not in MODES:
            raise ValueError(f"MetaWeightStep: mode must be one of {MODES}; got {mode!r}")
        if virtual_lr is None and student_optimizer is None:
            raise ValueError(
                "MetaWeightStep needs virtual_lr or the student's optimizer (for its LR)"
            )
        if virtual_lr is not None:
            self._check_virtual_lr(virtual_lr)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"MetaWeightStep: lr must be finite and > 0; got {lr}")
        if not (math.isfinite(fd_radius) and fd_radius > 0):
            raise ValueError(f"MetaWeightStep: fd_radius must be finite and > 0; got {fd_radius}")
        self.student = student
        self.compute_losses = compute_losses
        self.compute_heldout_losses = compute_heldout_losses
        self.weighting = weighting
        self.virtual_lr = virtual_lr
        self.student_optimizer = student_optimizer
        self.fd_radius = float(fd_radius)
        self.mode = mode
        self.measure_heldout_before = measure_heldout_before
        self.clipping = clipping
        self._held_factors = held_factors if held_factors is not None else HeldFactors()
        self.optimizer = torch.optim.Adam(
            [weighting.logits], lr=lr, betas=betas, weight_decay=weight_decay
        )

    # -- checkpoint ---------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Logits and Adam state: tensors and plain Python values only, loadable
        with ``torch.load(weights_only=True)``; checkpoint it under its own entry."""
        return {
            "names": list(self.weighting.names),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = tuple(state.get("names", ()))
        if names != self.weighting.names:
            raise ValueError(
                f"learned-weighting checkpoint has pathways {list(names)}, this run has "
                f"{list(self.weighting.names)}"
            )
        saved_reference = state["weighting"].get("reference")
        if saved_reference is not None and not torch.equal(
            saved_reference.cpu().to(self.weighting.reference.dtype),
            self.weighting.reference.cpu(),
        ):
            logger.warning(
                "Learned-weighting checkpoint: reference factors %s differ from the configured "
                "%s; resuming with the checkpoint's",
                saved_reference.tolist(),
                self.weighting.reference.tolist(),
            )
        self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])

    # -- the step -----------------------------------------------------------------------
    def step(self, train_batch: Any, heldout_batch: Any) -> MetaStepStats:
        """One bi-level update of the logits; the student ends exactly as it started."""
        params = self._student_params()
        lrs = self._virtual_lrs(params)
        buffers = BufferSnapshot(self.student)
        start = ForwardStart(self.student, params[0].device)
        weights_snapshot = ParameterSnapshot(params)
        heldout_before, epsilon = None, 0.0
        try:
            start.reset()
            with self._held_factors.recording():
                train_loss, grads = self._train_gradient(train_batch, params)
            if self.measure_heldout_before:
                start.reset()
                with torch.no_grad():
                    heldout_before = self._heldout_loss(heldout_batch).detach()
            step = self.clipping.clip(grads) if self.clipping is not None else grads
            weights_snapshot.step(step, [-lr for lr in lrs])  # w' = w - xi clip(grad_w L_train)
            start.reset()
            heldout_after = self._heldout_loss(heldout_batch)
            v = _grads(heldout_after, params)
            heldout_after = heldout_after.detach()
            weights_snapshot.restore()
            if not _finite_on_every_rank(heldout_after, train_loss):
                # Nothing to learn from on some rank: every rank skips the forwards below (they
                # may reduce across processes, e.g. the KD normaliser, so all ranks run them or
                # none does) and the update (NaN hypergradient).
                hypergradient = torch.full_like(self.weighting.logits, math.nan)
            else:
                u = [lr * g for lr, g in zip(lrs, v)]  # xi v, per parameter
                if self.clipping is not None:
                    u = self.clipping.pullback(grads, u)  # C xi v (clipping.py)
                del grads, step, v
                if self.mode == "exact":
                    start.reset()
                    hypergradient = self._exact(train_batch, params, u)
                else:
                    hypergradient, epsilon = self._finite_difference(train_batch, weights_snapshot, u, start)
        finally:
            weights_snapshot.restore()
            buffers.restore()
            start.reset()
        hypergradient = _average_across_ranks(hypergradient.detach())
        # A non-finite held-out/training loss or hypergradient on any rank: skip the update, so
        # neither the logits nor Adam's moments become NaN for good. No information on any
        # rank (u = 0: zero LR or zero held-out gradient): skip Adam too, whose momentum would
        # otherwise keep moving the logits. Same decisions on every rank.
        skipped = not bool(torch.isfinite(hypergradient).all())
        if skipped:
            logger.warning(
                "Meta-step skipped: non-finite held-out loss %s, training loss %s or hypergradient; "
                "the logits and their Adam state are unchanged", float(heldout_after), float(train_loss),
            )
        elif bool(hypergradient.any()):
            self._adam_step(hypergradient)
        return self._stats(hypergradient, heldout_before, heldout_after, train_loss, epsilon, skipped)

    def _student_params(self) -> List[nn.Parameter]:
        own = {id(p) for p in self.weighting.parameters()}
        params = [p for p in self.student.parameters() if p.requires_grad and id(p) not in own]
        if not params:
            raise ValueError("MetaWeightStep: the student has no trainable parameters")
        return params

    @staticmethod
    def _check_virtual_lr(value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"MetaWeightStep: virtual_lr must be finite and > 0; got {value} (with 0, "
                "DARTS's first-order case, the hypergradient is exactly zero here)"
            )

    def _virtual_lrs(self, params: Sequence[nn.Parameter]):
        if self.virtual_lr is not None:
            return [float(self.virtual_lr)] * len(params)
        lr_of = {
            id(p): float(group["lr"])
            for group in self.student_optimizer.param_groups
            for p in group["params"]
        }
        # Parameters outside the student's optimizer never move in training: xi = 0 for them.
        lrs = [lr_of.get(id(p), 0.0) for p in params]
        if not any(lr > 0 for lr in lrs):
            logger.warning("Meta-step: the student's LR is 0 everywhere; the logits stay put")
        return lrs

    def _train_losses(self, batch: Any) -> Tuple[LossDict, LossDict]:
        """(task losses, unweighted distillation losses) on a training batch."""
        task, distill = self.compute_losses(batch)
        check_same_names(self.weighting.names, distill.keys(), "compute_losses distillation")
        return task, distill

    def _train_objective(self, batch: Any) -> torch.Tensor:
        """``sum T + sum_i w_i d_i`` (the task terms may be absent: distillation without labels)."""
        task, distill = self._train_losses(batch)
        loss = sum(self.weighting(distill).values())
        return loss + sum(task.values()) if task else loss

    def _train_gradient(self, batch: Any, params: Sequence[nn.Parameter]):
        loss = self._train_objective(batch)
        return loss.detach(), [g.detach() for g in _grads(loss, params)]

    def _heldout_loss(self, batch: Any) -> torch.Tensor:
        if self.compute_heldout_losses is not None:
            task = self.compute_heldout_losses(batch)
        else:
            task, _ = self.compute_losses(batch)
        if not task:
            raise ValueError(
                "MetaWeightStep: the held-out batch produced no task losses; the meta-step "
                "needs ground truth on the held-out split"
            )
        return sum(task.values())

    def _distill_vector(self, batch: Any) -> torch.Tensor:
        _, distill = self._train_losses(batch)
        names = self.weighting.names
        return torch.stack([distill[n].reshape(()) for n in names]).to(self.weighting.logits)

    def _finite_difference(self, batch, snapshot: ParameterSnapshot, u, start: ForwardStart):
        """``-J^T (d(w + eps u) - d(w - eps u)) / (2 eps)`` with ``eps = fd_radius / ||u||``."""
        logits = self.weighting.logits
        norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in u)))
        # With u = 0 this rank learns nothing, but still runs both forwards (at w): other ranks
        # may be running theirs, which can reduce across processes.
        epsilon = self.fd_radius / norm if norm > 0.0 else 0.0
        with torch.no_grad(), self._held_factors.replaying():
            distill = []
            for sign in (1.0, -1.0):
                snapshot.step(u, [sign * epsilon] * len(u))
                start.reset()
                distill.append(self._distill_vector(batch))
            snapshot.restore()
        if norm == 0.0:
            logger.warning("Meta-step: the held-out gradient is zero or every LR is 0; no update")
            return torch.zeros_like(logits), 0.0
        difference = (distill[0] - distill[1]) / (2.0 * epsilon)
        (hypergradient,) = torch.autograd.grad(
            self.weighting.weight_vector(), logits, grad_outputs=-difference
        )
        return hypergradient, epsilon

    def _exact(self, batch, params: Sequence[nn.Parameter], u) -> torch.Tensor:
        """``-grad_a (u . grad_w L_train(w, a))`` by double backward."""
        logits = self.weighting.logits
        loss = self._train_objective(batch)
        grads = _grads(loss, params, create_graph=True)
        directional = sum((g * x).sum() for g, x in zip(grads, u) if g.requires_grad)
        if not isinstance(directional, torch.Tensor) or not directional.requires_grad:
            return torch.zeros_like(logits)
        (hypergradient,) = torch.autograd.grad(directional, logits, allow_unused=True)
        return torch.zeros_like(logits) if hypergradient is None else -hypergradient

    def _adam_step(self, hypergradient: torch.Tensor) -> None:
        logits = self.weighting.logits
        previous = logits.grad
        logits.grad = hypergradient.to(logits)
        try:
            self.optimizer.step()
        finally:
            logits.grad = previous

    def _stats(self, hypergradient, heldout_before, heldout_after, train_loss, epsilon, skipped):
        names = self.weighting.names
        with torch.no_grad():
            weights = self.weighting.weight_vector()
            scalars = [heldout_after, train_loss]
            if heldout_before is not None:
                scalars.append(heldout_before)
            scalars = torch.stack([x.detach().reshape(()).to(weights) for x in scalars])
            host = torch.cat([hypergradient.to(weights), weights, scalars]).double().tolist()
        n = len(names)
        hyper, weight_values, rest = host[:n], host[n : 2 * n], host[2 * n :]
        stats = MetaStepStats(
            hypergradient=dict(zip(names, hyper)),
            hypergradient_norm=math.sqrt(sum(g * g for g in hyper)),
            heldout_before=rest[2] if heldout_before is not None else None,
            heldout_after=rest[0],
            train_loss=rest[1],
            epsilon=epsilon,
            weights=dict(zip(names, weight_values)),
            skipped=skipped,
        )
        logger.debug("Meta-step: %s", stats)
        return stats
