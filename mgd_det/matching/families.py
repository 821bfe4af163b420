"""The pathway families, by name: what builds a family's pathway, one registration each.

A family is registered with the function that builds its :class:`~.pathways.Pathway` from a
:class:`~.pathways.PathwaySpec` and the distiller's :class:`BuildContext`::

    @register_family("MYFAM")
    def _build_myfam(spec, ctx):
        student_channels, teacher_channels = ctx.channels[spec.position]
        return MyPathway(spec, student_channels, teacher_channels)

``reads_head=True`` marks a family that distils the dense head's outputs (it takes no
position). :class:`~.pathways.PathwaySpec` accepts the registered names, and
:class:`~.distiller.PathwayDistiller` builds through :func:`build_pathway`; the built-in
families (SM, RD, AMP, SP, PKD, KD, BOX) are registered in :mod:`.distiller`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Tuple

from torch import nn

from ..errors import ConfigError
from .kd import FOCAL_GAMMA, FOREGROUND_TEMPERATURE

if TYPE_CHECKING:
    from .pathways import Pathway, PathwaySpec


@dataclass
class BuildContext:
    """What the distiller knows when it builds a pathway (see PathwayDistiller's arguments)."""

    channels: Mapping[str, Tuple[int, int]]  # position -> (student channels, teacher channels)
    student_norm: str
    num_groups: int
    allow_sharing: bool
    kd_temperature: float
    num_classes: int
    matchers: nn.ModuleDict  # the distiller's matchers, shared by matched pathways at a position
    # tau of the KD and BOX families' foreground weight sigmoid(teacher logit / tau) (see .kd)
    kd_fg_temperature: float = FOREGROUND_TEMPERATURE
    # gamma of the KD family's focal weight |p_s - p_t|^gamma on each element (see .kd)
    kd_focal_gamma: float = FOCAL_GAMMA


Builder = Callable[["PathwaySpec", BuildContext], "Pathway"]


@dataclass(frozen=True)
class PathwayFamily:
    name: str
    build: Builder
    reads_head: bool = False


_FAMILIES: Dict[str, PathwayFamily] = {}


def register_family(name: str, reads_head: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` as family ``name`` (upper case, as written in a spec)."""
    if not name or name != name.upper() or ":" in name or "=" in name:
        raise ValueError(f"pathway family name {name!r} must be upper case, without ':' or '='")

    def decorate(builder: Builder) -> Builder:
        if name in _FAMILIES:
            raise ValueError(f"pathway family {name!r} is already registered")
        _FAMILIES[name] = PathwayFamily(name, builder, reads_head)
        return builder

    return decorate


def family_names() -> Tuple[str, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES)


def reads_head(family: str) -> bool:
    """Whether ``family`` distils the dense head's outputs (False for unknown names)."""
    found = _FAMILIES.get(family)
    return found is not None and found.reads_head


def build_pathway(spec: "PathwaySpec", ctx: BuildContext) -> "Pathway":
    """The pathway of ``spec``, built by its family's registered builder."""
    family = _FAMILIES.get(spec.family)
    if family is None:
        raise ConfigError(f"unknown pathway family {spec.family!r}; valid families are {', '.join(_FAMILIES)}")
    return family.build(spec, ctx)
