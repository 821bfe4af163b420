"""``ReplayWeighting``: weights that follow a saved trajectory, with no meta-step.

DistPro's search-then-distil mode: a search run learns the weights (``LearnedWeighting`` +
``MetaWeightStep``) and saves their trajectory; a later run, often with a longer schedule,
replays it. The iteration axis is stretched linearly: iteration k of the new run reads the
trajectory at ``k * source_iters / stretch_to_iters``, interpolating linearly between
recorded points and holding the first/last recorded weights outside them.

Relative replay: what is learned is how far each weight moves from its reference (the
configured factor x MGD.LOSS_WEIGHT the learned weighting started from), so given this run's
``reference`` the replayed weight is ``reference_i x recorded_i / recorded_reference_i``. A
changed factor, MGD.LOSS_WEIGHT (0 switches distillation off) or student then applies, and a
trajectory learned on one schedule or student transfers to another. Without ``reference`` the
recorded weights are replayed as they are.
"""

from __future__ import annotations

import bisect
import math
import os
from typing import Dict, Mapping, Optional, Sequence, Union

import torch

from ..weighting import LossWeighting
from ._common import check_names, check_same_names
from .trajectory import PathLike, Trajectory, load_trajectory


class ReplayWeighting(LossWeighting):
    """Weights read from a trajectory at the current (stretched) iteration.

    Args:
        names: the pathways of this run; the same set as the trajectory's (columns are
            reordered to ``names`` order).
        trajectory: a ``Trajectory``, its dict form ``{names, iterations, weights}`` or the
            path of its JSON file.
        stretch_to_iters: the schedule length of this run.
        source_iters: the schedule length of the run that recorded the trajectory; None: the
            trajectory's own ``source_iters`` (ValueError if it records none).
        reference: this run's reference weight per pathway (finite, >= 0); None: replay the
            recorded weights as they are. Needs the trajectory's ``reference``.

    The trainer calls ``set_iteration(it)`` every step before the forward. The weights carry no
    gradient. The table is a non-persistent buffer (it moves with ``.to(device)`` but is not
    checkpointed): the run reads it from the trajectory file it was configured with.
    """

    def __init__(
        self,
        names: Sequence[str],
        trajectory: Union[Trajectory, Mapping, PathLike],
        stretch_to_iters: int,
        source_iters: Optional[int] = None,
        reference: Optional[Mapping[str, float]] = None,
    ):
        super().__init__()
        names = check_names(names, "ReplayWeighting")
        if isinstance(trajectory, (str, os.PathLike)):
            trajectory = load_trajectory(trajectory)
        elif not isinstance(trajectory, Trajectory):
            trajectory = Trajectory.from_dict(trajectory)
        check_same_names(names, trajectory.names, "ReplayWeighting trajectory")
        if source_iters is None:
            source_iters = trajectory.source_iters
            if source_iters is None:
                raise ValueError(
                    "ReplayWeighting: the trajectory records no source schedule (written by an older "
                    "version); pass source_iters, the number of iterations of the run that learned it"
                )
        for what, value in (("stretch_to_iters", stretch_to_iters), ("source_iters", source_iters)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"ReplayWeighting: {what} must be a positive int; got {value!r}")
        self.names = names
        self.scale = source_iters / stretch_to_iters
        self._points = [float(it) for it in trajectory.iterations]
        columns = [trajectory.names.index(name) for name in names]
        table = torch.tensor(trajectory.weights, dtype=torch.float64)[:, columns]
        if reference is not None:
            table = table * self._ratios(names, trajectory, reference, columns)
        self.register_buffer("table", table.float(), persistent=False)
        self._iteration = 0

    @staticmethod
    def _ratios(names, trajectory: Trajectory, reference: Mapping[str, float], columns) -> torch.Tensor:
        """This run's reference / the recorded one, per pathway in ``names`` order."""
        check_same_names(names, reference.keys(), "ReplayWeighting reference")
        values = [float(reference[name]) for name in names]
        bad = {n: v for n, v in zip(names, values) if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"ReplayWeighting: reference weights must be finite and >= 0; got {bad}")
        if trajectory.reference is None:
            raise ValueError(
                "ReplayWeighting: the trajectory records no reference weights (written by an older "
                "version), so it cannot be replayed relative to this run's; re-run the learned run"
            )
        recorded = torch.tensor(trajectory.reference, dtype=torch.float64)[columns]
        return torch.tensor(values, dtype=torch.float64) / recorded

    def set_iteration(self, iteration: int) -> None:
        """The current iteration of this run (weights are read at ``iteration * scale``)."""
        self._iteration = int(iteration)

    @property
    def iteration(self) -> int:
        return self._iteration

    def weight_vector(self) -> torch.Tensor:
        """The n interpolated weights, in ``names`` order (the index search runs on the host,
        the arithmetic on the table's device: no synchronisation)."""
        x = self._iteration * self.scale
        points = self._points
        if x <= points[0]:
            return self.table[0].clone()
        if x >= points[-1]:
            return self.table[-1].clone()
        lo = bisect.bisect_right(points, x) - 1  # points[lo] <= x < points[lo + 1]
        t = (x - points[lo]) / (points[lo + 1] - points[lo])
        if t == 0.0:
            return self.table[lo].clone()
        return self.table[lo] + t * (self.table[lo + 1] - self.table[lo])

    def weights(self) -> Dict[str, torch.Tensor]:
        vector = self.weight_vector()
        return {name: vector[i] for i, name in enumerate(self.names)}

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, scale={self.scale:g}, points={len(self._points)}"
