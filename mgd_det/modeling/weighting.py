"""Registry of loss weightings (how much each distillation pathway counts), the pathways a
config asks for, and the checks of the keys that choose them.

Which weighting is built is chosen by ``MGD.WEIGHTING``; a learned weighting (DistPro)
registers a builder here and needs no change elsewhere. Builders take the config and the
pathway specs and return a :class:`~mgd_det.matching.weighting.LossWeighting` over the
pathway names.

This module owns the pathway keys (``MGD.PATHWAYS``, ``POSITIONS``, ``FACTORS``, ``REDUCER``,
``KD.*``, ``STUDENT_NORM``, ``NORM_GROUPS``, ``ALLOW_CHANNEL_SHARING``) and the weighting keys
(``LOSS_WEIGHT``, ``WEIGHTING``, ``DISTPRO.*``): their checks are registered here with
:func:`~mgd_det.config_checks.register_config_check`, and the builders raise through the same
checks, so a bad value reads the same whether validation or the builder finds it. The
Detectron2-free core describes bad values by its own argument names; :func:`build_pathway_distiller`
names the config keys instead.
"""
import logging
import math
import os
import re
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

from mgd_det.config_checks import choice_problems, is_number, number_problems, raise_problems, register_config_check
from mgd_det.errors import ConfigError
from mgd_det.matching import REDUCERS, STUDENT_NORMS
from mgd_det.matching._checks import repeated
from mgd_det.matching.distiller import PathwayDistiller, mgd_pathway_specs
from mgd_det.matching.distpro import LearnedWeighting, ReplayWeighting, load_trajectory
from mgd_det.matching.distpro.meta_step import MODES as HYPERGRADIENT_MODES
from mgd_det.matching.pathways import PathwaySpec, parse_pathway
from mgd_det.matching.weighting import ConstantWeighting, LossWeighting

logger = logging.getLogger(__name__)

LOSS_WEIGHTING_REGISTRY = Registry("MGD_LOSS_WEIGHTING")
LOSS_WEIGHTING_REGISTRY.__doc__ = "Builders (cfg, pathway specs) -> LossWeighting, selected by MGD.WEIGHTING."

# Distillation positions by Detectron2 names (see MGD.POSITIONS).
VALID_POSITIONS = ("res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6", "p7")
# Core (PathwayDistiller) arguments set from config keys: the core's errors name the argument,
# build_pathway_distiller puts the key in its place.
CORE_ARGUMENT_KEYS = {
    "allow_sharing": "MGD.ALLOW_CHANNEL_SHARING",
    "student_norm": "MGD.STUDENT_NORM",
    "num_groups": "MGD.NORM_GROUPS",
    "kd_temperature": "MGD.KD.TEMPERATURE",
    "kd_fg_temperature": "MGD.KD.FOREGROUND_TEMPERATURE",
    "kd_focal_gamma": "MGD.KD.FOCAL_GAMMA",
}


def _read_pathways(cfg: CfgNode) -> Tuple[List[PathwaySpec], List[str]]:
    """(the pathway specs the config asks for, the problems of the keys that ask for them)."""
    mgd = cfg.MGD
    specs: List[PathwaySpec] = []
    problems: List[str] = []
    if mgd.PATHWAYS:
        for text in mgd.PATHWAYS:
            try:
                spec = parse_pathway(text)
            except (ValueError, TypeError) as err:
                problems.append(f"MGD.PATHWAYS entry {text!r}: {err}")
                continue
            if spec.position is not None and spec.position not in VALID_POSITIONS:
                problems.append(f"MGD.PATHWAYS entry {text!r}: unknown position {spec.position!r}; "
                                f"valid: {', '.join(VALID_POSITIONS)}")
            specs.append(spec)
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
    bad = [f for f in factors if not is_number(f) or not math.isfinite(f) or f < 0]
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
    return specs, problems


def pathway_specs_from_cfg(cfg: CfgNode) -> List[PathwaySpec]:
    """MGD.PATHWAYS when given, else the common case: POSITIONS x REDUCER (+ KD)."""
    specs, problems = _read_pathways(cfg)
    raise_problems(problems)
    if cfg.MGD.PATHWAYS:
        logger.info("MGD.PATHWAYS given: MGD.POSITIONS, FACTORS and REDUCER are not used")
    return specs


def build_pathway_distiller(cfg: CfgNode, specs: Sequence[PathwaySpec], channels: Mapping[str, Tuple[int, int]],
                            num_classes: int = 0) -> PathwayDistiller:
    """The core's :class:`PathwayDistiller` set up from the MGD keys; its errors name the keys."""
    try:
        return PathwayDistiller(
            specs, channels, student_norm=cfg.MGD.STUDENT_NORM, num_groups=cfg.MGD.NORM_GROUPS,
            allow_sharing=cfg.MGD.ALLOW_CHANNEL_SHARING, weighting=build_loss_weighting(cfg, specs),
            kd_temperature=cfg.MGD.KD.TEMPERATURE, num_classes=num_classes,
            kd_fg_temperature=cfg.MGD.KD.FOREGROUND_TEMPERATURE, kd_focal_gamma=cfg.MGD.KD.FOCAL_GAMMA,
        )
    except ConfigError as err:
        text, keys = str(err), [key for arg, key in CORE_ARGUMENT_KEYS.items() if re.search(rf"\b{arg}\b", str(err))]
        if not keys:
            raise
        for arg, key in CORE_ARGUMENT_KEYS.items():
            text = re.sub(rf"\b{arg}\b", key, text)
        raise ConfigError(text, key=keys[0]) from err


@LOSS_WEIGHTING_REGISTRY.register()
def constant(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    """Each pathway's factor times MGD.LOSS_WEIGHT, fixed by the config."""
    return ConstantWeighting(configured_weights(cfg, specs))


def configured_weights(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> Dict[str, float]:
    """``{pathway: factor x MGD.LOSS_WEIGHT}``: the constant weights, and the learned ones' reference."""
    return {s.name: s.factor * cfg.MGD.LOSS_WEIGHT for s in specs}


@LOSS_WEIGHTING_REGISTRY.register()
def learned(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    """DistPro: one logit per pathway, the configured weights as reference (the meta-step is
    mgd_det/engine/distpro.py). The logits are frozen here (requires_grad False: out of the
    student's optimizer, backward and DDP); only the meta-step moves them."""
    weighting = LearnedWeighting([s.name for s in specs], configured_weights(cfg, specs))
    weighting.logits.requires_grad_(False)
    return weighting


@LOSS_WEIGHTING_REGISTRY.register()
def replay(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    """A learned run's weight trajectory (MGD.DISTPRO.TRAJECTORY), replayed relative to this
    run's reference weights (weight = factor x MGD.LOSS_WEIGHT x learned / recorded reference,
    so changed factors and LOSS_WEIGHT apply; 0 switches distillation off) and stretched from
    the recorded schedule (MGD.DISTPRO.REPLAY_SOURCE_ITERS when > 0) to SOLVER.MAX_ITER."""
    distpro, path = cfg.MGD.DISTPRO, cfg.MGD.DISTPRO.TRAJECTORY
    trajectory = load_trajectory(path)
    missing = [key for key, value in (("reference", trajectory.reference),
                                      ("source_iters", distpro.REPLAY_SOURCE_ITERS or trajectory.source_iters))
               if value is None]
    if missing:
        raise ConfigError(
            f"MGD.DISTPRO.TRAJECTORY {path} records no {' and no '.join(missing)} (written by an older version): "
            "re-run the learned run, or add to the file \"reference\": [factor x MGD.LOSS_WEIGHT per pathway, "
            "in its \"names\" order, of the run that learned it] and \"source_iters\": <that run's "
            "SOLVER.MAX_ITER> (or set MGD.DISTPRO.REPLAY_SOURCE_ITERS)", key="MGD.DISTPRO.TRAJECTORY", path=path,
        )
    source_iters = distpro.REPLAY_SOURCE_ITERS or trajectory.source_iters
    if trajectory.source_iters and source_iters != trajectory.source_iters:
        logger.warning("MGD.DISTPRO.REPLAY_SOURCE_ITERS %d overrides the %d iterations recorded in %s",
                       source_iters, trajectory.source_iters, path)
    logger.info("Replaying %s: learned over %d iterations (meta-step PERIOD %s), stretched to %d, relative to "
                "this run's reference weights", path, source_iters, trajectory.period, cfg.SOLVER.MAX_ITER)
    return ReplayWeighting(
        [s.name for s in specs], trajectory, stretch_to_iters=cfg.SOLVER.MAX_ITER, source_iters=source_iters,
        reference=configured_weights(cfg, specs),
    )


def build_loss_weighting(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    name = cfg.MGD.WEIGHTING
    raise_problems(_weighting_name_problems(cfg))
    weighting = LOSS_WEIGHTING_REGISTRY.get(name)(cfg, specs)
    if not isinstance(weighting, LossWeighting):
        raise TypeError(f"MGD.WEIGHTING {name!r} built {type(weighting).__name__}, not a LossWeighting")
    return weighting


# ------------------------------------------------------------------------ checks
def _weighting_name_problems(cfg: CfgNode) -> Iterator[str]:
    return choice_problems(cfg, "MGD.WEIGHTING", sorted(k for k, _ in LOSS_WEIGHTING_REGISTRY))


@register_config_check
def check_pathways(cfg: CfgNode) -> Iterator[str]:
    """MGD.PATHWAYS, or MGD.POSITIONS / FACTORS / REDUCER (+ KD) of the common case."""
    yield from _read_pathways(cfg)[1]


@register_config_check
def check_norm(cfg: CfgNode) -> Iterator[str]:
    yield from choice_problems(cfg, "MGD.STUDENT_NORM", STUDENT_NORMS)
    yield from number_problems(cfg, "MGD.NORM_GROUPS", minimum=0, strict=True, integer=True, hint=", e.g. 32")


@register_config_check
def check_weights(cfg: CfgNode) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.LOSS_WEIGHT", minimum=0, hint=" (0 disables distillation)")
    yield from _weighting_name_problems(cfg)


@register_config_check
def check_kd(cfg: CfgNode) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.KD.WEIGHT", minimum=0)
    yield from number_problems(cfg, "MGD.KD.TEMPERATURE", minimum=0, strict=True, hint=", e.g. 1.0")
    yield from number_problems(cfg, "MGD.KD.FOREGROUND_TEMPERATURE", minimum=0, strict=True,
                               hint=" (the KD and BOX pathways' foreground sharpness), e.g. 0.1")
    yield from number_problems(cfg, "MGD.KD.FOCAL_GAMMA", minimum=0,
                               hint=" (the dense KD's focal exponent; 0: the plain KL), e.g. 2.0")


@register_config_check
def check_distpro_numbers(cfg: CfgNode) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.DISTPRO.PERIOD", minimum=0, strict=True, integer=True,
                               hint=": iterations between DistPro meta-steps, e.g. 10")
    yield from number_problems(cfg, "MGD.DISTPRO.LR", minimum=0, strict=True, hint=", e.g. 0.05")
    yield from number_problems(cfg, "MGD.DISTPRO.VIRTUAL_LR", minimum=0, hint=" (0: the student's LR)")
    yield from number_problems(cfg, "MGD.DISTPRO.FD_RADIUS", minimum=0, strict=True, hint=", e.g. 1e-4")
    yield from number_problems(cfg, "MGD.DISTPRO.REPLAY_SOURCE_ITERS", minimum=0, integer=True,
                               hint=" (0: the schedule recorded in the trajectory)")
    fraction = cfg.MGD.DISTPRO.HELDOUT_FRACTION
    if not is_number(fraction) or not 0 < fraction < 1:
        what = ("holds out no image" if is_number(fraction) and fraction <= 0 else
                "holds out the whole training set, leaving nothing to train on" if is_number(fraction) else
                "is not a number")
        yield (f"MGD.DISTPRO.HELDOUT_FRACTION must be > 0 and < 1 (got {fraction!r}, which {what}): "
               "the share of the training set DistPro holds out, e.g. 0.05")


@register_config_check
def check_distpro_hypergradient(cfg: CfgNode) -> Iterator[str]:
    yield from choice_problems(cfg, "MGD.DISTPRO.HYPERGRADIENT", HYPERGRADIENT_MODES)


def _pathway_names(cfg: CfgNode) -> Optional[List[str]]:
    """The pathway names the config builds, or None when the pathway keys are themselves bad
    (reported by check_pathways)."""
    specs, problems = _read_pathways(cfg)
    return None if problems else [s.name for s in specs]


@register_config_check
def check_distpro_learned(cfg: CfgNode) -> Iterator[str]:
    if cfg.MGD.WEIGHTING != "learned":
        return
    names = _pathway_names(cfg)
    if names is not None and len(names) < 2:
        yield (f"MGD.WEIGHTING 'learned' needs at least 2 pathways to weigh against each other (got "
               f"{names}): add positions to MGD.POSITIONS (or entries to MGD.PATHWAYS), or use "
               "MGD.WEIGHTING 'constant'")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        yield (f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} cannot be used with MGD.WEIGHTING "
               "'learned': DistPro cuts its held-out split from the TrainingSampler's data set; set "
               "DATALOADER.SAMPLER_TRAIN 'TrainingSampler'")
    if is_number(cfg.MGD.LOSS_WEIGHT) and cfg.MGD.LOSS_WEIGHT == 0:
        yield ("MGD.LOSS_WEIGHT 0 switches distillation off, so there is nothing for MGD.WEIGHTING 'learned' "
               "to weigh: set MGD.LOSS_WEIGHT > 0, or MGD.WEIGHTING 'constant'")


@register_config_check
def check_distpro_replay(cfg: CfgNode) -> Iterator[str]:
    if cfg.MGD.WEIGHTING != "replay":
        return
    path = cfg.MGD.DISTPRO.TRAJECTORY
    hint = "the distpro_trajectory.json a run with MGD.WEIGHTING 'learned' wrote into its OUTPUT_DIR"
    if not path:
        yield f"MGD.DISTPRO.TRAJECTORY is empty: MGD.WEIGHTING 'replay' needs {hint}"
        return
    if not os.path.isfile(path):
        yield f"MGD.DISTPRO.TRAJECTORY {path} not found: give {hint} (relative paths: from the working directory)"
        return
    try:
        names = load_trajectory(path).names
    except (ValueError, OSError) as err:
        yield f"MGD.DISTPRO.TRAJECTORY {path} cannot be read: {err}"
        return
    expected = _pathway_names(cfg)
    if expected is not None and set(expected) != set(names):
        yield (f"MGD.DISTPRO.TRAJECTORY {path} weighs pathways {sorted(names)}, this config has "
               f"{sorted(expected)}: replay it with the pathways it was learned for")
