"""The pathway family registry: register a family, read a pathway entry, build its pathway.

A family is one module that declares its options and registers the function building its
:class:`~mgd_det.matching.pathways.Pathway`, in one line::

    @register_family("GAP", options=(number("scale", 1.0, "how much the gap counts"),))
    def build_gap(spec, ctx, options):
        return MeanGap(spec, options["scale"])

``reads`` says what the family distils: tapped features at a position (the default) or one
kind of head output (:data:`~mgd_det.matching.outputs.HEAD_OUTPUTS`: ``"dense"`` for RetinaNet
heads, ``"rpn"``, ``"regions"`` and ``"masks"`` for R-CNN heads); a head family takes no
position, and the model computes each kind only when a pathway reads it. The builder receives the entry's spec, the distiller's :class:`BuildContext`
(channel counts, number of classes, shared matchers) and the family's resolved options
(:func:`~mgd_det.matching.options.resolve_options`: checked once, here).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from ...errors import ConfigError
from ...registry import Registry
from ..held_factors import HeldFactors
from ..options import Option, parse_option, resolve_options
from ..outputs import FEATURES, HEAD_OUTPUTS
from ..pathways import Pathway, PathwaySpec


@dataclass
class BuildContext:
    """What the distiller knows about the models when it builds a pathway."""

    channels: Mapping[str, Tuple[int, int]]  # position -> (student channels, teacher channels)
    num_classes: int
    matchers: nn.ModuleDict  # the distiller's matchers, shared by matched pathways at a position
    # defaults of family options by option name (e.g. {"temperature": 2.0}); each family
    # reads the ones it declares
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    # detached, student-dependent factors of the losses, held during DistPro's probes
    held_factors: HeldFactors = field(default_factory=HeldFactors)

    def feature_channels(self, spec: PathwaySpec) -> Tuple[int, int]:
        """(student channels at the spec's position, teacher channels at its source)."""
        for position in (spec.position, spec.source):
            if position not in self.channels:
                raise ConfigError(f"pathway {spec.name!r}: no channel counts for position {position!r}")
        return self.channels[spec.position][0], self.channels[spec.source][1]


Builder = Callable[[PathwaySpec, BuildContext, Dict[str, Any]], Pathway]


@dataclass(frozen=True)
class PathwayFamily:
    name: str
    build: Builder
    options: Tuple[Option, ...] = ()
    reads: str = FEATURES  # FEATURES or one of HEAD_OUTPUTS
    # whether a pathway may read a teacher position other than the student's (its transform
    # aligns maps of different strides and widths)
    cross_position: bool = False

    @property
    def reads_head(self) -> bool:
        return self.reads != FEATURES


FAMILIES: Registry[PathwayFamily] = Registry("pathway family")


def register_family(name: str, options: Tuple[Option, ...] = (), reads: str = FEATURES,
                    cross_position: bool = False):
    """Decorator: register ``builder`` as family ``name`` (upper case, as written in an entry)."""
    if not name or name != name.upper() or ":" in name or "=" in name:
        raise ValueError(f"pathway family name {name!r} must be upper case, without ':' or '='")
    if reads not in (FEATURES,) + HEAD_OUTPUTS:
        raise ValueError(f"pathway family {name!r}: reads must be one of {(FEATURES,) + HEAD_OUTPUTS}, not {reads!r}")

    def decorate(builder: Builder) -> Builder:
        FAMILIES.register(name, PathwayFamily(name, builder, tuple(options), reads, cross_position))
        return builder

    return decorate


def family_names() -> Tuple[str, ...]:
    """Every registered family, in registration order."""
    return FAMILIES.names()


def family(name: str) -> PathwayFamily:
    return FAMILIES.get(name)


def declared_option(name: str) -> Option:
    """The declaration of option ``name`` by the first family that has one (families sharing
    an option name share its meaning and check: ``fg_temperature`` of KD and BOX)."""
    for _, found in FAMILIES.items():
        for option in found.options:
            if option.name == name:
                return option
    raise KeyError(f"no pathway family declares an option {name!r}")


def reads_head(name: str) -> bool:
    """Whether family ``name`` distils head outputs, not features (False for unknown names)."""
    return name in FAMILIES and FAMILIES.get(name).reads_head


def reads(name: str) -> str:
    """What family ``name`` reads: ``"features"`` or a kind of head output."""
    return FAMILIES.get(name).reads


_ENTRY = re.compile(r"^\s*(?:(?P<name>\w+)\s*=\s*)?(?P<family>[^=:]+?)\s*(?::(?P<rest>.*))?$")


def parse_pathways(text: str) -> List[PathwaySpec]:
    """``"[name=]FAMILY[:POSITIONS][:FACTOR][:option=value...]"`` -> the pathways it names.

    POSITIONS is a student position (``res4``), a connection ``STUDENT<TEACHER`` (``res4<res5``:
    the student's res4 learns from the teacher's res5), or comma lists of either side, which
    expand to every pair (``res3,res4<res4,res5``: four pathways; ``res3,res4``: one per
    position): a family's whole connection set in one entry. Head families take no position.
    Examples: ``"AMP:res4:2e-7"``, ``"sm4=SM:res4:1e-7"``, ``"AT:res3,res4,res5<res3,res4,res5"``,
    ``"KD:0.5:temperature=2"``, ``"BOX"``.
    """
    match = _ENTRY.match(text or "")
    if not match:
        raise ConfigError(f"cannot read pathway {text!r}; write FAMILY[:POSITION][:FACTOR][:option=value], "
                          "e.g. 'AMP:res4:2e-7'")
    found = family(match.group("family").strip().upper())
    fields = [p.strip() for p in match.group("rest").split(":")] if match.group("rest") is not None else []
    plain = [f for f in fields if "=" not in f]
    if fields[:len(plain)] != plain:
        raise ConfigError(f"pathway {text!r}: options (name=value) come after the position and factor")
    pairs: List[Tuple[Optional[str], Optional[str]]] = [(None, None)]
    if not found.reads_head and plain:
        pairs, plain = _position_pairs(text, plain[0]), plain[1:]
    if len(plain) > 1:
        raise ConfigError(f"pathway {text!r} has too many ':' fields; write FAMILY[:POSITION][:FACTOR][:option=value]")
    factor = 1.0
    if plain:
        try:
            factor = float(plain[0])
        except ValueError:
            raise ConfigError(f"pathway {text!r}: factor {plain[0]!r} is not a number") from None
    if match.group("name") and len(pairs) > 1:
        raise ConfigError(f"pathway {text!r} names {len(pairs)} pathways: a name (NAME=) fits one; leave it out "
                          "(each pathway is then named FAMILY_STUDENT_TEACHER)")
    option_fields = fields[len(fields) - sum(1 for f in fields if "=" in f):]
    specs = []
    for student, teacher in pairs:
        spec = PathwaySpec(found.name, student, factor, match.group("name") or "", teacher_position=teacher)
        _check_position(found, spec)
        options = dict(parse_option(found.options, spec.name, f) for f in option_fields)
        specs.append(spec.with_options(options) if options else spec)
    return specs


def parse_pathway(text: str) -> PathwaySpec:
    """The one pathway of an entry (see :func:`parse_pathways`)."""
    specs = parse_pathways(text)
    if len(specs) != 1:
        raise ConfigError(f"pathway {text!r} names {len(specs)} pathways; expected one")
    return specs[0]


def _position_pairs(text: str, field_text: str) -> List[Tuple[str, Optional[str]]]:
    """``"res3,res4<res5"`` -> [("res3", "res5"), ("res4", "res5")]; ``"res3,res4"`` ->
    [("res3", None), ("res4", None)]."""
    sides = field_text.split("<")
    if len(sides) > 2:
        raise ConfigError(f"pathway {text!r}: write positions as STUDENT or STUDENT<TEACHER, e.g. res4<res5")
    lists = [[p.strip() for p in side.split(",")] for side in sides]
    if any(not p for side in lists for p in side):
        raise ConfigError(f"pathway {text!r}: an empty position in {field_text!r}")
    if len(lists) == 1:
        return [(p, None) for p in lists[0]]
    return [(s, t) for s in lists[0] for t in lists[1]]


def _check_position(found: PathwayFamily, spec: PathwaySpec) -> None:
    if found.reads_head and (spec.position or spec.teacher_position):
        raise ConfigError(f"pathway family {spec.family!r} reads the head and takes no position")
    if not found.reads_head and not spec.position:
        raise ConfigError(f"pathway family {spec.family!r} needs a position (e.g. res3 or p4)")
    if spec.crosses and not found.cross_position:
        across = [n for n, f in FAMILIES.items() if f.cross_position]
        raise ConfigError(
            f"pathway {spec.name!r}: the {spec.family} family compares student and teacher at one position "
            f"(got student {spec.position}, teacher {spec.teacher_position}); connect different positions "
            f"with {' or '.join(across) or 'a cross-position family'}")


def check_spec(spec: PathwaySpec, defaults: Mapping[str, Any] = None) -> Dict[str, Any]:
    """The spec's family options, resolved and checked; a ConfigError if the spec does not fit
    its family (unknown family, a position where none is taken or none where one is needed)."""
    found = family(spec.family)
    _check_position(found, spec)
    return resolve_options(found.options, spec.name, spec.options, defaults)


def build_pathway(spec: PathwaySpec, ctx: BuildContext) -> Pathway:
    """The pathway of ``spec``, built by its family's builder with the resolved options."""
    options = check_spec(spec, ctx.option_defaults)
    return family(spec.family).build(spec, ctx, options)
