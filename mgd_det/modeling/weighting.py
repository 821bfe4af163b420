"""Loss weightings (how much each distillation pathway counts), selected by ``MGD.WEIGHTING``.

Builders ``(cfg, pathway specs) -> LossWeighting`` registered in :data:`LOSS_WEIGHTINGS`:
``constant`` (factor x ``MGD.LOSS_WEIGHT``), ``learned`` (DistPro; its meta-step and the keys
it reads are :mod:`mgd_det.engine.distpro`'s) and ``replay`` (a learned run's trajectory,
``MGD.DISTPRO.TRAJECTORY`` / ``REPLAY_SOURCE_ITERS``, read and checked here). A new
weighting registers a builder here and needs no change elsewhere.
"""
import logging
import os
from typing import Dict, Iterator, Sequence

from detectron2.config import CfgNode

from mgd_det.config_checks import choice_problems, number_problems, raise_problems, register_config_check
from mgd_det.errors import ConfigError
from mgd_det.matching.distpro import LearnedWeighting, ReplayWeighting, load_trajectory
from mgd_det.matching.pathways import PathwaySpec
from mgd_det.matching.weighting import ConstantWeighting, LossWeighting
from mgd_det.modeling.pathway_config import pathway_names
from mgd_det.registry import Registry

logger = logging.getLogger(__name__)

LOSS_WEIGHTINGS: Registry = Registry("loss weighting")


@LOSS_WEIGHTINGS.register("constant")
def constant(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    """Each pathway's factor times MGD.LOSS_WEIGHT, fixed by the config."""
    return ConstantWeighting(configured_weights(cfg, specs))


def configured_weights(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> Dict[str, float]:
    """``{pathway: factor x MGD.LOSS_WEIGHT}``: the constant weights, and the learned ones' reference."""
    return {s.name: s.factor * cfg.MGD.LOSS_WEIGHT for s in specs}


@LOSS_WEIGHTINGS.register("learned")
def learned(cfg: CfgNode, specs: Sequence[PathwaySpec]) -> LossWeighting:
    """DistPro: one logit per pathway, the configured weights as reference (the meta-step is
    mgd_det/engine/distpro.py). The logits are frozen here (requires_grad False: out of the
    student's optimizer, backward and DDP); only the meta-step moves them."""
    weighting = LearnedWeighting([s.name for s in specs], configured_weights(cfg, specs))
    weighting.logits.requires_grad_(False)
    return weighting


@LOSS_WEIGHTINGS.register("replay")
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
    weighting = LOSS_WEIGHTINGS.get(name, key="MGD.WEIGHTING")(cfg, specs)
    if not isinstance(weighting, LossWeighting):
        raise TypeError(f"MGD.WEIGHTING {name!r} built {type(weighting).__name__}, not a LossWeighting")
    return weighting


# ------------------------------------------------------------------------ checks
@register_config_check
def check_weights(cfg: CfgNode) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.LOSS_WEIGHT", minimum=0, hint=" (0 disables distillation)")
    yield from choice_problems(cfg, "MGD.WEIGHTING", LOSS_WEIGHTINGS.names())
    yield from number_problems(cfg, "MGD.DISTPRO.REPLAY_SOURCE_ITERS", minimum=0, integer=True,
                               hint=" (0: the schedule recorded in the trajectory)")


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
    expected = pathway_names(cfg)
    if expected is not None and set(expected) != set(names):
        yield (f"MGD.DISTPRO.TRAJECTORY {path} weighs pathways {sorted(names)}, this config has "
               f"{sorted(expected)}: replay it with the pathways it was learned for")
