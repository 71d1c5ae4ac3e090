"""SDE kernels and the Gaussian log-density against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from unirl_stream.algorithms.kernels import gaussian_log_prob, ode_step, sde_step


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_flow_sde_mean_and_std_by_hand() -> None:
    x, v = torch.full((1, 2), 0.5), torch.full((1, 2), -1.0)
    sigma, nxt, smax, eta = 0.6, 0.4, 0.9, 0.7
    mean, std = sde_step("flow_sde", x, v, _t(sigma), _t(nxt), _t(smax), eta)
    dt = nxt - sigma
    st = eta * math.sqrt(sigma / (1 - sigma))
    mu = 0.5 * (1 + st**2 / (2 * sigma) * dt) + -1.0 * (1 + st**2 * (1 - sigma) / (2 * sigma)) * dt
    assert mean[0, 0].item() == pytest.approx(mu, rel=1e-6)
    assert std.flatten()[0].item() == pytest.approx(st * math.sqrt(-dt), rel=1e-6)


def test_flow_sde_first_step_borrows_second_sigma() -> None:
    x, v = torch.ones(1, 3), torch.zeros(1, 3)
    _, std = sde_step("flow_sde", x, v, _t(1.0), _t(0.8), _t(0.8), 0.5)
    assert std.flatten()[0].item() == pytest.approx(0.5 * math.sqrt(1.0 / 0.2) * math.sqrt(0.2), rel=1e-6)
    assert torch.isfinite(std).all()


def test_dance_sde_mean_and_std_by_hand() -> None:
    x, v = torch.full((1, 1), 0.3), torch.full((1, 1), 0.2)
    sigma, nxt, eta = 0.5, 0.25, 1.0
    mean, std = sde_step("dance_sde", x, v, _t(sigma), _t(nxt), _t(0.9), eta)
    dt = nxt - sigma
    x0 = 0.3 - sigma * 0.2
    score = -(0.3 - (1 - sigma) * x0) / sigma**2
    assert mean.item() == pytest.approx(0.3 + 0.2 * dt - 0.5 * eta**2 * score * dt, rel=1e-6)
    assert std.flatten()[0].item() == pytest.approx(eta * math.sqrt(0.25), rel=1e-6)


def test_ode_step_and_eta_zero_guard() -> None:
    x, v = torch.ones(2, 1), torch.full((2, 1), 2.0)
    assert ode_step(x, v, _t(0.5, 0.5), _t(0.25, 0.25)).flatten().tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="eta > 0"):
        sde_step("flow_sde", x, v, _t(0.5, 0.5), _t(0.25, 0.25), _t(0.9, 0.9), 0.0)
    with pytest.raises(ValueError, match="unknown SDE kernel"):
        sde_step("ddim", x, v, _t(0.5, 0.5), _t(0.25, 0.25), _t(0.9, 0.9), 0.5)


def test_log_prob_is_mean_of_elementwise_gaussian_log_density() -> None:
    g = torch.Generator().manual_seed(0)
    y, mean = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    std = torch.tensor([0.1, 0.5, 2.0]).view(3, 1, 1)
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(y).mean(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(y, mean, std), ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (2, 3, 2, 5)])
def test_cps_sde_against_the_reference_formula(shape: tuple[int, ...]) -> None:
    """REFERENCE.md: s = sigma' sin(eta pi/2); x0 = x - sigma v; x1 = x + (1 - sigma) v;
    mu = (1 - sigma') x0 + sqrt(sigma'^2 - s^2) x1; element by element in plain Python."""
    g = torch.Generator().manual_seed(len(shape))
    b = shape[0]
    x, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sigma = torch.linspace(0.9, 0.5, b)
    nxt = sigma - 0.15
    eta = 0.7
    mean, std = sde_step("cps_sde", x, v, sigma, nxt, sigma, eta)
    for i in range(b):
        si, sn = float(sigma[i]), float(nxt[i])
        s = sn * math.sin(eta * math.pi / 2)
        assert std.reshape(b, -1)[i, 0].item() == pytest.approx(s, rel=1e-6)
        for xe, ve, me in zip(x[i].flatten().tolist(), v[i].flatten().tolist(), mean[i].flatten().tolist(), strict=True):
            x0, x1 = xe - si * ve, xe + (1 - si) * ve
            assert me == pytest.approx((1 - sn) * x0 + math.sqrt(sn**2 - s**2) * x1, rel=1e-5, abs=1e-6)


def test_cps_sde_keeps_the_noise_share_and_tends_to_the_ode_step() -> None:
    # Coefficients: x0's is 1 - sigma'; the noise (x1 and fresh) adds in quadrature to sigma'.
    x, v = torch.randn(2, 8), torch.randn(2, 8)
    sigma, nxt = _t(0.8, 0.6), _t(0.5, 0.2)
    _, std = sde_step("cps_sde", x, v, sigma, nxt, sigma, 1.0)
    assert torch.allclose(std.flatten(), nxt)  # eta = 1: all of the next noise is fresh
    mean, _ = sde_step("cps_sde", x, v, sigma, nxt, sigma, 1e-4)
    assert torch.allclose(mean, ode_step(x, v, sigma, nxt), atol=1e-5)  # eta -> 0: the ODE step
