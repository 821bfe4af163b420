"""The MGD common case in one call, for tests: one reducer over several positions."""
from dataclasses import dataclass
from typing import Optional, Sequence

from mgd_det.matching import LossWeighting, PathwayDistiller, mgd_pathway_specs


@dataclass
class Position:
    """One MGD position: a name and the channel counts on each side."""

    name: str
    student_channels: int
    teacher_channels: int
    factor: float = 1.0


def mgd_distiller(positions: Sequence[Position], reducer: str = "AMP", weighting: Optional[LossWeighting] = None,
                  **options) -> PathwayDistiller:
    """A distiller with one ``reducer`` pathway per position (``loss_mgd_<position>``); keyword
    arguments are family options (``student_norm``, ``norm_groups``, ``allow_sharing``)."""
    return PathwayDistiller(
        mgd_pathway_specs([(p.name, p.factor) for p in positions], reducer),
        {p.name: (p.student_channels, p.teacher_channels) for p in positions},
        weighting=weighting, option_defaults=options,
    )
