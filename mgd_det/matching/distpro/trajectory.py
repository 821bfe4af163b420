"""The saved weight trajectory: a JSON file ``{names, iterations, weights, reference,
source_iters, period}``.

``weights`` is one row per recorded iteration, one column per pathway in ``names`` order.
What a replay needs to transfer it to another run is recorded with it: ``reference``, the
weights the learned ones were relative to (factor x MGD.LOSS_WEIGHT per pathway, ``names``
order), ``source_iters``, the schedule length (SOLVER.MAX_ITER) of the run that learned it,
and ``period``, its MGD.DISTPRO.PERIOD. Files written before these were recorded lack them
(None here); ``ReplayWeighting`` then needs them passed explicitly. The
file is what a search run leaves behind for plotting (``tools/plot_weights.py``) and for a
later run that replays it (``ReplayWeighting``); JSON rather than a torch file so that it is
readable without torch and diffable.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from ...atomic_io import atomic_write_text
from ._common import check_names

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Trajectory:
    """A validated trajectory: strictly increasing iterations, one finite row per iteration,
    and the optional metadata of the module doc (reference > 0 per pathway, positive ints)."""

    names: Tuple[str, ...]
    iterations: Tuple[int, ...]
    weights: Tuple[Tuple[float, ...], ...]
    reference: Optional[Tuple[float, ...]] = None
    source_iters: Optional[int] = None
    period: Optional[int] = None

    def __post_init__(self):
        names = check_names(self.names, "trajectory")
        iterations = tuple(int(it) for it in self.iterations)
        weights = tuple(tuple(float(w) for w in row) for row in self.weights)
        if not iterations:
            raise ValueError("trajectory: no recorded iterations")
        if len(weights) != len(iterations):
            raise ValueError(
                f"trajectory: {len(iterations)} iterations but {len(weights)} weight rows"
            )
        if any(len(row) != len(names) for row in weights):
            raise ValueError(f"trajectory: every weight row needs {len(names)} values")
        if any(b <= a for a, b in zip(iterations, iterations[1:])):
            raise ValueError("trajectory: iterations must be strictly increasing")
        if not all(math.isfinite(w) for row in weights for w in row):
            raise ValueError("trajectory: weights must be finite")
        if self.reference is not None:
            reference = tuple(float(r) for r in self.reference)
            if len(reference) != len(names) or not all(math.isfinite(r) and r > 0 for r in reference):
                raise ValueError(f"trajectory: reference needs {len(names)} finite values > 0; got {list(reference)}")
            object.__setattr__(self, "reference", reference)
        for key in ("source_iters", "period"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"trajectory: {key} must be a positive integer; got {value!r}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "iterations", iterations)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trajectory":
        missing = [key for key in ("names", "iterations", "weights") if key not in data]
        if missing:
            raise ValueError(f"trajectory: missing keys {missing}")
        reference = data.get("reference")
        return cls(
            tuple(data["names"]), tuple(data["iterations"]), tuple(data["weights"]),
            reference=None if reference is None else tuple(reference),
            source_iters=data.get("source_iters"), period=data.get("period"),
        )

    def to_dict(self) -> dict:
        data = {
            "names": list(self.names),
            "iterations": list(self.iterations),
            "weights": [list(row) for row in self.weights],
        }
        if self.reference is not None:
            data["reference"] = list(self.reference)
        data.update({k: getattr(self, k) for k in ("source_iters", "period") if getattr(self, k) is not None})
        return data

    def column(self, name: str) -> Sequence[float]:
        """The weights of one pathway over the recorded iterations."""
        index = self.names.index(name)
        return [row[index] for row in self.weights]


def load_trajectory(path: PathLike) -> Trajectory:
    """Read and validate a trajectory JSON file."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"trajectory {os.fspath(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"trajectory {os.fspath(path)!r}: expected a JSON object")
    return Trajectory.from_dict(data)


def save_trajectory(trajectory: Trajectory, path: PathLike) -> None:
    """Write ``trajectory`` to ``path`` atomically (:func:`mgd_det.atomic_io.atomic_write_text`),
    so a reader (or a run killed mid-write) never sees half a file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(trajectory.to_dict()))
