"""The pinned sampling schedule: shifted flow-matching sigmas and the timesteps fed to Wan.

A rollout computes the schedule once, stores it on the trajectory (fp32, exactly the values
the sampler used) and replay reads it back from there: it is never recomputed on the trainer,
so a changed config or library can't silently desynchronise rollout and replay.

Schedule (``N`` steps, shift ``s``):  u_i = 1 - i/N for i = 0..N,
sigma_i = s*u_i / (1 + (s-1)*u_i)   (SD3/Wan time shift; sigma_0 = 1, sigma_N = 0),
t_i = 1000 * sigma_i for i < N (what the transformer sees). Step i moves sigma_i -> sigma_{i+1}.

We depart from Wan's own UniPC schedule on purpose: its grid ends with a large jump to 0
(FACTS.md) that an SDE step can't take sensibly, and a multistep solver has no per-step
Gaussian transition to score.

This module imports no torch: ``expert_of_steps`` is used by recipe checks and tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

NUM_TRAIN_TIMESTEPS = 1000  # Wan's scheduler config; timesteps are sigma * 1000
HIGH, LOW = 0, 1  # expert indices: transformer (high noise), transformer_2 (low noise)


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32 (what the stored schedule holds)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def sigma_grid(num_steps: int, shift: float) -> list[float]:
    """``num_steps + 1`` sigmas from 1 to 0, rounded to float32."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    out = []
    for i in range(num_steps + 1):
        u = 1.0 - i / num_steps
        out.append(_f32(shift * u / (1.0 + (shift - 1.0) * u)))
    return out


def timestep_grid(sigmas: Sequence[float]) -> list[float]:
    """Timesteps of the ``len(sigmas) - 1`` steps, rounded to float32."""
    return [_f32(float(s) * NUM_TRAIN_TIMESTEPS) for s in list(sigmas)[:-1]]


def route(timestep: float, boundary_ratio: float | None, num_experts: int) -> int:
    """The expert that denoises at ``timestep`` (diffusers' rule: high while t >= boundary)."""
    if num_experts < 2 or boundary_ratio is None:
        return HIGH
    return HIGH if timestep >= boundary_ratio * NUM_TRAIN_TIMESTEPS else LOW


def expert_of_steps(
    sigmas: Sequence[float],
    boundary_ratio: float | None,
    steps: Sequence[int],
    num_experts: int = 2,
) -> list[int]:
    """Expert index (0 = high noise ``transformer``, 1 = low noise ``transformer_2``) of each
    step in ``steps``. Use it to check that a recipe's SDE steps reach every expert it
    trains: ``expert_of_steps(sigma_grid(20, 5.0), 0.875, range(20))``."""
    ts = timestep_grid(sigmas)
    return [route(ts[i], boundary_ratio, num_experts) for i in steps]
