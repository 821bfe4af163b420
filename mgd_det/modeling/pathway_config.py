"""The pathways a config asks for, the distiller built from them, and the checks of their keys.

Owns ``MGD.PATHWAYS`` (entries ``"[NAME=]FAMILY[:POSITION][:FACTOR][:option=value...]"``), the
common case's ``MGD.POSITIONS`` / ``FACTORS`` / ``REDUCER`` / ``KD.ENABLED`` / ``KD.WEIGHT``,
and the global keys that give family options their defaults (:data:`OPTION_KEYS`; an entry's
own ``option=value`` wins). Option values are checked by the families themselves
(:func:`~mgd_det.matching.families.check_spec`); a bad one comes back as an
:class:`~mgd_det.matching.options.OptionError` whose fields say which key to name: the
``MGD.PATHWAYS`` entry that set it, or the global key its default came from.
"""
import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from detectron2.config import CfgNode

from mgd_det.config_checks import choice_problems, is_number, number_problems, raise_problems, register_config_check
from mgd_det.errors import ConfigError
from mgd_det.matching import REDUCERS
from mgd_det.matching._checks import repeated
from mgd_det.matching.distiller import PathwayDistiller, mgd_pathway_specs
from mgd_det.matching.families import check_spec, declared_option, parse_pathways
from mgd_det.matching.options import OptionError
from mgd_det.matching.pathways import PathwaySpec
from mgd_det.matching.weighting import LossWeighting

logger = logging.getLogger(__name__)

# Distillation positions by Detectron2 names (see MGD.POSITIONS).
VALID_POSITIONS = ("res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6", "p7")
# Family option -> the global key that gives its default (for every family declaring it).
OPTION_KEYS = {
    "student_norm": "MGD.STUDENT_NORM",
    "norm_groups": "MGD.NORM_GROUPS",
    "allow_sharing": "MGD.ALLOW_CHANNEL_SHARING",
    "temperature": "MGD.KD.TEMPERATURE",
    "fg_temperature": "MGD.KD.FOREGROUND_TEMPERATURE",
    "focal_gamma": "MGD.KD.FOCAL_GAMMA",
}


def option_defaults(cfg: CfgNode) -> Dict[str, Any]:
    """``{option: value of its global key}`` (see :data:`OPTION_KEYS`)."""
    values = {}
    for option, key in OPTION_KEYS.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        values[option] = node
    return values


def _option_problem(err: OptionError, entry: Optional[str]) -> Tuple[str, str]:
    """(the key at fault, one line naming it) for a family option's bad value."""
    key = OPTION_KEYS.get(err.option) if err.from_default else None
    if key:
        return key, f"{key} {err.problem} (got {err.value!r}){err.hint}"
    where = f"MGD.PATHWAYS entry {entry!r}" if entry else f"pathway {err.pathway!r}"
    return "MGD.PATHWAYS", f"{where}: option {err.option}={err.value!r} {err.problem}{err.hint}"


def _checked(spec: PathwaySpec, defaults: Mapping[str, Any], entry: Optional[str], problems: List[str]) -> None:
    try:
        check_spec(spec, defaults)
    except OptionError as err:
        if not (err.from_default and err.option in OPTION_KEYS):  # check_option_keys reports those
            problems.append(_option_problem(err, entry)[1])
    except ConfigError as err:
        problems.append(f"MGD.PATHWAYS entry {entry!r}: {err}" if entry else f"{err}")


def _read_pathways(cfg: CfgNode) -> Tuple[List[PathwaySpec], List[str]]:
    """(the pathway specs the config asks for, the problems of the keys that ask for them)."""
    mgd = cfg.MGD
    specs: List[PathwaySpec] = []
    problems: List[str] = []
    defaults = option_defaults(cfg)
    if mgd.PATHWAYS:
        for text in mgd.PATHWAYS:
            try:
                entry_specs = parse_pathways(text)
            except OptionError as err:
                problems.append(_option_problem(err, text)[1])
                continue
            except (ValueError, TypeError) as err:
                problems.append(f"MGD.PATHWAYS entry {text!r}: {err}")
                continue
            unknown = sorted({p for s in entry_specs for p in (s.position, s.teacher_position)
                              if p is not None and p not in VALID_POSITIONS})
            if unknown:
                problems.append(f"MGD.PATHWAYS entry {text!r}: unknown position {', '.join(map(repr, unknown))}; "
                                f"valid: {', '.join(VALID_POSITIONS)}")
            for spec in entry_specs:
                _checked(spec, defaults, text, problems)
            specs.extend(entry_specs)
        duplicates = repeated(s.name for s in specs)
        if duplicates:
            problems.append(f"MGD.PATHWAYS names {duplicates} more than once: name them, e.g. 'amp4=AMP:res4:2e-6'")
        if mgd.KD.ENABLED:
            problems.append("MGD.KD.ENABLED is set together with MGD.PATHWAYS: add 'KD:<factor>' to "
                            "MGD.PATHWAYS and set MGD.KD.ENABLED False")
        return specs, problems
    positions, factors = list(mgd.POSITIONS), list(mgd.FACTORS)
    unknown = [p for p in positions if p not in VALID_POSITIONS]
    if unknown:
        problems.append(f"MGD.POSITIONS: unknown position(s) {unknown}; valid: {', '.join(VALID_POSITIONS)}")
    duplicates = repeated(positions)
    if duplicates:
        problems.append(f"MGD.POSITIONS lists {duplicates} more than once")
    no_pathway = not positions and not mgd.KD.ENABLED
    if len(factors) != len(positions) and not no_pathway:  # with no position the factors are moot
        problems.append(f"MGD.FACTORS has {len(factors)} entries but MGD.POSITIONS has {len(positions)} "
                        f"({positions}): give one factor per position")
    bad = [f for f in factors if not is_number(f) or not f < float("inf") or not f >= 0]
    if bad:
        problems.append(f"MGD.FACTORS must be finite numbers >= 0 (got {bad})")
    problems += choice_problems(cfg, "MGD.REDUCER", REDUCERS)
    if no_pathway:
        problems.append("MGD.POSITIONS is empty (and MGD.PATHWAYS too, MGD.KD off): an MGD run needs at least "
                        "one pathway to distil; list positions, e.g. MGD.POSITIONS \"['res4', 'res5']\" "
                        "MGD.FACTORS \"[2e-7, 2e-7]\", or train a plain detector config instead")
    if not problems:
        specs = mgd_pathway_specs(list(zip(positions, map(float, factors))), mgd.REDUCER)
        if mgd.KD.ENABLED:
            specs.append(PathwaySpec("KD", factor=float(mgd.KD.WEIGHT)))
        for spec in specs:
            _checked(spec, defaults, None, problems)
    return specs, problems


def pathway_specs_from_cfg(cfg: CfgNode) -> List[PathwaySpec]:
    """MGD.PATHWAYS when given, else the common case: POSITIONS x REDUCER (+ KD)."""
    specs, problems = _read_pathways(cfg)
    raise_problems(problems)
    if cfg.MGD.PATHWAYS:
        logger.info("MGD.PATHWAYS given: MGD.POSITIONS, FACTORS and REDUCER are not used")
    return specs


def pathway_names(cfg: CfgNode) -> Optional[List[str]]:
    """The pathway names the config builds, or None when the pathway keys are themselves bad
    (reported by check_pathways)."""
    specs, problems = _read_pathways(cfg)
    return None if problems else [s.name for s in specs]


def build_pathway_distiller(cfg: CfgNode, specs: Sequence[PathwaySpec], channels: Mapping[str, Tuple[int, int]],
                            num_classes: int = 0, weighting: Optional[LossWeighting] = None) -> PathwayDistiller:
    """The core's :class:`PathwayDistiller` for ``specs`` with the option defaults of the MGD
    keys and ``weighting`` (the model passes :func:`~.weighting.build_loss_weighting`'s; None:
    each pathway's factor); a bad option names its key."""
    try:
        return PathwayDistiller(specs, channels, weighting=weighting, num_classes=num_classes,
                                option_defaults=option_defaults(cfg))
    except OptionError as err:
        key, line = _option_problem(err, None)
        raise ConfigError(line, key=key) from err


# ------------------------------------------------------------------------ checks
@register_config_check
def check_pathways(cfg: CfgNode) -> Iterator[str]:
    """MGD.PATHWAYS (with their family options), or MGD.POSITIONS / FACTORS / REDUCER (+ KD)."""
    yield from _read_pathways(cfg)[1]


@register_config_check
def check_option_keys(cfg: CfgNode) -> Iterator[str]:
    """The global keys of :data:`OPTION_KEYS`, by their option's own check, whether or not a
    pathway of the config reads them (a bad value is a mistake either way)."""
    for option, value in option_defaults(cfg).items():
        declared = declared_option(option)
        problem = declared.check(value)
        if problem:
            yield f"{OPTION_KEYS[option]} {problem} (got {value!r}){declared.hint}"


@register_config_check
def check_kd_weight(cfg: CfgNode) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.KD.WEIGHT", minimum=0)
