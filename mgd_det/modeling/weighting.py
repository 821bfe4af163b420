"""Registry of distillation loss weightings (how much each pathway counts).

The distiller multiplies each position's loss by its weight from a
:class:`~mgd_det.matching.weighting.LossWeighting`. Which one is built is chosen by
``MGD.WEIGHTING``; a learned weighting (e.g. DistPro's meta-learned per-pathway weights)
registers a builder here and needs no change elsewhere.
"""
from typing import Sequence

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

from mgd_det.matching.weighting import ConstantWeighting, LossWeighting

LOSS_WEIGHTING_REGISTRY = Registry("MGD_LOSS_WEIGHTING")
LOSS_WEIGHTING_REGISTRY.__doc__ = "Builders (cfg, positions) -> LossWeighting, selected by MGD.WEIGHTING."


@LOSS_WEIGHTING_REGISTRY.register()
def constant(cfg: CfgNode, positions: Sequence[str]) -> LossWeighting:
    """MGD.LOSS_WEIGHT for every position (the per-position factors are MGD.FACTORS)."""
    return ConstantWeighting({p: cfg.MGD.LOSS_WEIGHT for p in positions})


def build_loss_weighting(cfg: CfgNode, positions: Sequence[str]) -> LossWeighting:
    name = cfg.MGD.WEIGHTING
    if name not in LOSS_WEIGHTING_REGISTRY:
        raise ValueError(
            f"Unknown MGD.WEIGHTING {name!r}; registered: {sorted(k for k, _ in LOSS_WEIGHTING_REGISTRY)}"
        )
    weighting = LOSS_WEIGHTING_REGISTRY.get(name)(cfg, positions)
    if not isinstance(weighting, LossWeighting):
        raise TypeError(f"MGD.WEIGHTING {name!r} built {type(weighting).__name__}, not a LossWeighting")
    return weighting
