"""The saved weight trajectory: a JSON file ``{names, iterations, weights}``.

``weights`` is one row per recorded iteration, one column per pathway in ``names`` order. The
file is what a search run leaves behind for plotting (``tools/plot_weights.py``) and for a
later run that replays it (``ReplayWeighting``); JSON rather than a torch file so that it is
readable without torch and diffable.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Tuple, Union

from ...atomic_io import atomic_write_text
from ._common import check_names

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Trajectory:
    """A validated trajectory: strictly increasing iterations, one finite row per iteration."""

    names: Tuple[str, ...]
    iterations: Tuple[int, ...]
    weights: Tuple[Tuple[float, ...], ...]

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
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "iterations", iterations)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trajectory":
        missing = [key for key in ("names", "iterations", "weights") if key not in data]
        if missing:
            raise ValueError(f"trajectory: missing keys {missing}")
        return cls(tuple(data["names"]), tuple(data["iterations"]), tuple(data["weights"]))

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "iterations": list(self.iterations),
            "weights": [list(row) for row in self.weights],
        }

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
