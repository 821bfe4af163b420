"""Registry of loss weightings (how much each distillation pathway counts), and the
pathways a config asks for.

Which weighting is built is chosen by ``MGD.WEIGHTING``; a learned weighting (DistPro)
registers a builder here and needs no change elsewhere. Builders take the config and the
pathway specs and return a :class:`~mgd_det.matching.weighting.LossWeighting` over the
pathway names.
"""
import logging
from typing import Dict, List, Sequence

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

from mgd_det.matching.distiller import mgd_pathway_specs
from mgd_det.matching.distpro import LearnedWeighting, ReplayWeighting
from mgd_det.matching.pathways import PathwaySpec, parse_pathway
from mgd_det.matching.weighting import ConstantWeighting, LossWeighting
from mgd_det.errors import ConfigError

logger = logging.getLogger(__name__)

LOSS_WEIGHTING_REGISTRY = Registry("MGD_LOSS_WEIGHTING")
LOSS_WEIGHTING_REGISTRY.__doc__ = "Builders (cfg, pathway specs) -> LossWeighting, selected by MGD.WEIGHTING."


def pathway_specs_from_cfg(cfg: CfgNode) -> List[PathwaySpec]:
    """MGD.PATHWAYS when given, else the common case: POSITIONS x REDUCER (+ KD)."""
    mgd = cfg.MGD
    if mgd.PATHWAYS:
        if mgd.KD.ENABLED:
            raise ConfigError(
                "MGD.KD.ENABLED is set together with MGD.PATHWAYS; add 'KD:<factor>' to "
                "MGD.PATHWAYS instead and set MGD.KD.ENABLED False."
            )
        logger.info("MGD.PATHWAYS given: MGD.POSITIONS, FACTORS and REDUCER are not used")
        return [parse_pathway(text) for text in mgd.PATHWAYS]
    positions, factors = list(mgd.POSITIONS), list(mgd.FACTORS)
    if len(factors) != len(positions):
        raise ConfigError(
            f"MGD.FACTORS has {len(factors)} entries but MGD.POSITIONS has {len(positions)} "
            f"({positions}); give one factor per position."
        )
    specs = mgd_pathway_specs(list(zip(positions, map(float, factors))), mgd.REDUCER)
    if mgd.KD.ENABLED:
        specs.append(PathwaySpec("KD", factor=float(mgd.KD.WEIGHT)))
    return specs


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
    """A learned run's weight trajectory (MGD.DISTPRO.TRAJECTORY), stretched from
    MGD.DISTPRO.REPLAY_SOURCE_ITERS to SOLVER.MAX_ITER; weights as recorded (not rescaled)."""
    distpro = cfg.MGD.DISTPRO
    return ReplayWeighting(
        [s.name for s in specs], distpro.TRAJECTORY, stretch_to_iters=cfg.SOLVER.MAX_ITER,
        source_iters=distpro.REPLAY_SOURCE_ITERS or cfg.SOLVER.MAX_ITER,
    )


def build_loss_weighting(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    name = cfg.MGD.WEIGHTING
    if name not in LOSS_WEIGHTING_REGISTRY:
        raise ConfigError(
            f"Unknown MGD.WEIGHTING {name!r}; registered: {sorted(k for k, _ in LOSS_WEIGHTING_REGISTRY)}"
        )
    weighting = LOSS_WEIGHTING_REGISTRY.get(name)(cfg, specs)
    if not isinstance(weighting, LossWeighting):
        raise TypeError(f"MGD.WEIGHTING {name!r} built {type(weighting).__name__}, not a LossWeighting")
    return weighting
