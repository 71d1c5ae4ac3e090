"""One denoising step: deterministic ODE, or a Gaussian SDE transition with its log-density.

Notation (docs/algorithms.md has the derivations): x = latent at sigma (fp32), v = the
model's guided velocity prediction (fp32), sigma' = the next sigma (< sigma), dt = sigma' - sigma
(negative), eta = the noise level. Every SDE kernel returns the mean mu and the scalar std s of
N(x' ; mu, s^2 I); the sampled transition is x' = mu + s * eps.

``flow_sde``  (Flow-GRPO) s_t = eta * sqrt(sigma / (1 - sigma_c)), sigma_c = sigma except at
              sigma = 1 where Flow-GRPO substitutes the schedule's second sigma;
              mu = x (1 + s_t^2 dt / (2 sigma)) + v (1 + s_t^2 (1 - sigma) / (2 sigma)) dt,
              s = s_t sqrt(-dt).
``dance_sde`` (DanceGRPO) x0 = x - sigma v, score = -(x - (1 - sigma) x0) / sigma^2,
              mu = x + v dt - (eta^2 / 2) score dt,  s = eta sqrt(-dt).
``cps_sde``   (coefficient-preserving sampling) s = sigma' sin(eta pi / 2), x0 = x - sigma v,
              x1 = x + (1 - sigma) v (the predicted noise), mu = (1 - sigma') x0 +
              sqrt(sigma'^2 - s^2) x1: the noise share of x' stays sigma' (x1's share and the
              fresh noise's add in quadrature), so no step inflates the latent's norm.
              Departure from the reference implementation: its CPS "log-prob" is the
              unnormalised -mean (x' - mu)^2; we score CPS with the same Gaussian log-density
              as the other kernels (std s), so ratios and clip ranges mean the same for all.
              Its last step (sigma' = 0) has s = 0: it is never an SDE step (validated).
``ode``       x' = x + v dt.

All tensors here are fp32; per-sample scalars (sigma, ...) are [B] and broadcast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

Kernel = Literal["flow_sde", "dance_sde", "cps_sde"]
KERNELS: tuple[str, ...] = ("flow_sde", "dance_sde", "cps_sde")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _col(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    return x + v * _col(sigma_next - sigma, x)


def flow_sde(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
    sigma_max: torch.Tensor, eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    dt = _col(sigma_next - sigma, x)
    sig = _col(sigma, x)
    # Flow-GRPO's guard: at sigma = 1 the ratio sigma / (1 - sigma) is infinite, so the first
    # step borrows the denominator of the schedule's second sigma.
    denom = 1.0 - torch.where(sig == 1.0, _col(sigma_max, x), sig)
    std_t = torch.sqrt(sig / denom) * eta
    mean = x * (1.0 + std_t**2 / (2.0 * sig) * dt) + v * (1.0 + std_t**2 * (1.0 - sig) / (2.0 * sig)) * dt
    return mean, std_t * torch.sqrt(-dt)


def dance_sde(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    dt = _col(sigma_next - sigma, x)
    sig = _col(sigma, x)
    x0 = x - sig * v
    score = -(x - (1.0 - sig) * x0) / sig**2
    mean = x + v * dt - 0.5 * eta**2 * score * dt
    return mean, eta * torch.sqrt(-dt)


def cps_sde(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    sig, nxt = _col(sigma, x), _col(sigma_next, x)
    std = nxt * math.sin(eta * math.pi / 2.0)
    x0 = x - sig * v
    x1 = x + (1.0 - sig) * v
    mean = (1.0 - nxt) * x0 + torch.sqrt((nxt**2 - std**2).clamp(min=0.0)) * x1
    return mean, std


def sde_step(
    kernel: str, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
    sigma_max: torch.Tensor, eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Gaussian transition; std has x's rank (broadcastable)."""
    if eta <= 0:
        raise ValueError(f"an SDE step needs eta > 0 (sampling.eta), got {eta}")
    if kernel == "flow_sde":
        return flow_sde(x, v, sigma, sigma_next, sigma_max, eta)
    if kernel == "dance_sde":
        return dance_sde(x, v, sigma, sigma_next, eta)
    if kernel == "cps_sde":
        return cps_sde(x, v, sigma, sigma_next, eta)
    raise ValueError(f"unknown SDE kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(y; mean, std^2 I) averaged over the latent elements -> [B].

    Averaged, not summed, as the reference recipes do (FACTS.md): it keeps per-step log-probs
    O(1) whatever the video size, which is what clip ranges like 1e-4 are tuned for."""
    lp = -((y.detach() - mean) ** 2) / (2.0 * std**2) - std.log() - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))
