"""DistPro: learned per-pathway distillation weights by meta-optimisation (pure torch).

- ``LearnedWeighting``: one logit per pathway, weights ``reference * n * softmax([logits, 0])``,
  with a recorded trajectory.
- ``MetaWeightStep``: the one-step-lookahead bi-level update of those logits (virtual SGD step,
  held-out task loss, finite-difference Hessian-vector product), with its own Adam.
- ``ReplayWeighting``: replays a saved trajectory, stretched to a new schedule, without any
  meta-step.
- ``Trajectory`` / ``load_trajectory`` / ``save_trajectory``: the trajectory JSON file.
- ``GradientClipping``: the student optimizer's clipping, reproduced in the virtual step.
- ``AttributeSnapshot``: a module tree's plain attributes (e.g. loss-normaliser EMAs), restorable.

No Detectron2 import here; the trainer side (when to step, held-out split, logging to
EventStorage, checkpoint entry) lives in ``mgd_det.engine``.
"""

from ._snapshot import AttributeSnapshot
from .clipping import GradientClipping
from .learned import LearnedWeighting
from .meta_step import MetaStepStats, MetaWeightStep
from .replay import ReplayWeighting
from .trajectory import Trajectory, load_trajectory, save_trajectory

__all__ = [
    "AttributeSnapshot",
    "GradientClipping",
    "LearnedWeighting",
    "MetaStepStats",
    "MetaWeightStep",
    "ReplayWeighting",
    "Trajectory",
    "load_trajectory",
    "save_trajectory",
]
