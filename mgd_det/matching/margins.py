"""Per-channel margins for the partial distillation loss, from a norm layer's affine params.

Before the ReLU, a normalised-then-affine channel is read as N(beta, gamma^2). Its margin
is the mean of its negative part, m = E[x | x < 0]: everything the ReLU maps to 0 is
represented by one value the student should not go above.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Below this probability of a negative value the truncated mean is numerically unreliable
# (and the channel is essentially never negative); the original method then uses -3|gamma|.
NEGATIVE_PROBABILITY_FLOOR = 0.001
GUARD_STDS = 3.0
# |gamma| at or below this counts as zero: the channel is the constant beta.
TINY_STD = 1e-12


def gaussian_negative_mean(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(beta, gamma^2), elementwise, with the original's guard.

    m = beta - |gamma| * phi(beta/|gamma|) / Phi(-beta/|gamma|), and -3|gamma| where
    Phi(-beta/|gamma|) <= 0.001. A zero gamma is the degenerate limit: a constant channel
    beta, so m = beta when beta < 0 (the formula's limit) and the guard value 0 otherwise.
    Computed in float64, returned in float32 on the inputs' device; never NaN for finite
    inputs.
    """
    beta, gamma = torch.broadcast_tensors(beta.detach().double(), gamma.detach().double())
    std = gamma.abs()
    tiny = std <= TINY_STD
    z = beta / torch.where(tiny, torch.ones_like(std), std)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    p_negative = torch.special.ndtr(-z)
    guarded = p_negative <= NEGATIVE_PROBABILITY_FLOOR
    truncated = beta - std * density / p_negative.clamp_min(NEGATIVE_PROBABILITY_FLOOR)
    margin = torch.where(guarded, -GUARD_STDS * std, truncated)
    margin = torch.where(tiny, torch.where(beta < 0, beta, torch.zeros_like(beta)), margin)
    return margin.float()


def _affine_params(module: nn.Module):
    """(weight, bias) of a supported norm layer with affine parameters, else None."""
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        if module.weight is None or module.bias is None:
            return None
        return module.weight, module.bias
    # Detectron2's FrozenBatchNorm2d, recognised by duck typing so that this package does not
    # import detectron2: its weight/bias buffers are the affine gamma/beta.
    if type(module).__name__ == "FrozenBatchNorm2d":
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
            return weight, bias
    return None


def margin_from_norm(module: Optional[nn.Module]) -> Optional[torch.Tensor]:
    """Per-channel margins [C] from the norm layer feeding a ReLU, or None for plain L2.

    Supported: BatchNorm2d, SyncBatchNorm (and other ``_BatchNorm``), Detectron2's
    FrozenBatchNorm2d (duck typed), GroupNorm. For the BN family, the output of a channel is
    N(beta, gamma^2) under the statistics the layer normalises with. GroupNorm normalises
    each (sample, group) to zero mean and unit variance, so every channel of the group is,
    pooled over samples and positions, again roughly standardised before its own
    per-channel affine gamma/beta: we read the channel as N(beta, gamma^2) and use the same
    formula. None is returned for None, unsupported modules (e.g. Identity, FPN outputs)
    and norm layers without affine parameters.

    Margins are detached, float32, on the module's parameter device.
    """
    if module is None:
        return None
    params = _affine_params(module)
    if params is None:
        logger.debug("no margin for %s: not an affine norm layer", type(module).__name__)
        return None
    weight, bias = params
    return gaussian_negative_mean(bias, weight)
