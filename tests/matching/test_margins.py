"""Margins: truncated-Gaussian mean against numerical integration, guard, norm layers."""

import pytest
import torch
from scipy import integrate, stats
from torch import nn

from mgd_det.matching import gaussian_negative_mean, margin_from_norm


def negative_mean_by_quadrature(beta, gamma):
    dist = stats.norm(loc=beta, scale=abs(gamma))
    lower = min(beta, 0.0) - 40 * abs(gamma)  # finite range: quad misses narrow peaks otherwise
    numerator, _ = integrate.quad(lambda x: x * dist.pdf(x), lower, 0.0, points=[min(beta, 0.0)])
    return numerator / dist.cdf(0.0)


@pytest.mark.parametrize(
    "beta,gamma",
    [
        (0.0, 1.0),
        (0.5, 1.0),
        (-0.5, 2.0),
        (1.0, -0.7),
        (-3.0, 0.5),
        (2.5, 1.0),
        (3.0, 1.0),
        (-0.2, 0.05),
        (0.1, 0.05),
    ],
)
def test_matches_numerical_integration(beta, gamma):
    got = gaussian_negative_mean(torch.tensor([beta]), torch.tensor([gamma]))
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(negative_mean_by_quadrature(beta, gamma), rel=1e-5, abs=1e-6)


def test_guard_branch():
    # Phi(-beta/|gamma|) <= 0.001 -> -3|gamma|; Phi(-3.2) ~ 0.0007, Phi(-5) ~ 3e-7.
    beta = torch.tensor([3.2, 5.0, 10.0, 40.0])
    gamma = torch.tensor([1.0, -1.0, 0.5, 2.0])
    assert torch.allclose(gaussian_negative_mean(beta, gamma), -3 * gamma.abs())


def test_zero_gamma_is_finite_limit():
    beta = torch.tensor([-1.0, 0.0, 1.0])
    got = gaussian_negative_mean(beta, torch.zeros(3))
    assert torch.isfinite(got).all()
    # A constant channel beta: its negative part is beta itself when beta < 0, else guard 0.
    assert torch.allclose(got, torch.tensor([-1.0, 0.0, 0.0]))
    near = gaussian_negative_mean(torch.tensor([-1.0]), torch.tensor([1e-6]))
    assert float(near) == pytest.approx(-1.0, abs=1e-5)


def _set_affine(module, beta, gamma):
    with torch.no_grad():
        module.weight.copy_(gamma)
        module.bias.copy_(beta)
    return module


BETA = torch.tensor([0.3, -0.2, 1.0, 4.0])
GAMMA = torch.tensor([1.0, 0.5, -2.0, 1.0])


@pytest.mark.parametrize(
    "make", [lambda: nn.BatchNorm2d(4), lambda: nn.SyncBatchNorm(4), lambda: nn.GroupNorm(2, 4)]
)
def test_margin_from_torch_norms(make):
    module = _set_affine(make(), BETA, GAMMA)
    got = margin_from_norm(module)
    assert not got.requires_grad and got.dtype == torch.float32
    assert torch.allclose(got, gaussian_negative_mean(BETA, GAMMA))


class FrozenBatchNorm2d(nn.Module):
    """Stand-in with Detectron2's class name: affine params are plain buffers."""

    def __init__(self, num_features):
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))


def test_margin_from_frozen_bn_by_duck_typing():
    module = _set_affine(FrozenBatchNorm2d(4), BETA, GAMMA)
    assert torch.allclose(margin_from_norm(module), gaussian_negative_mean(BETA, GAMMA))


@pytest.mark.parametrize(
    "module", [None, nn.Identity(), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 4, 1)]
)
def test_no_margin(module):
    assert margin_from_norm(module) is None
