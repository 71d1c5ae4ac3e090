"""Dynamic-shift schedules (Qwen-Image, FLUX): mu from the image token count, sigmas from
diffusers' own scheduler. Pinned on the trajectory like every schedule (algorithms/schedule.py
has the static shift)."""

from __future__ import annotations

from typing import Any


def shift_mu(seq_len: int, cfg: dict[str, Any]) -> float:
    """Dynamic shift's mu: linear in the image token count between the scheduler config's
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
    lo, hi = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    m = (cfg.get("max_shift", 1.15) - cfg.get("base_shift", 0.5)) / (hi - lo)
    return seq_len * m + cfg.get("base_shift", 0.5) - m * lo


def dynamic_sigmas(scheduler_cfg: dict[str, Any], num_steps: int, mu: float) -> list[float]:
    """The schedule of a ``use_dynamic_shifting`` scheduler for ``mu``: diffusers'
    ``FlowMatchEulerDiscreteScheduler`` itself (time-shift type, ``shift_terminal``) on
    ``linspace(1, 1/N, N)``, then the final 0, as the pipelines call it (REFERENCE.md)."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_cfg)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps).tolist(), mu=mu)
    sig = [float(x) for x in sched.sigmas.float()]
    if len(sig) != num_steps + 1 or sig[-1] != 0.0:
        raise ValueError(f"unexpected dynamic-shift schedule {sig} for {num_steps} steps")
    return sig


def flux2_mu(seq_len: int, num_steps: int) -> float:
    """FLUX.2's empirical mu (diffusers' ``Flux2KleinPipeline``): two lines in the image token
    count, fitted at 10 and 200 steps, interpolated linearly in the step count; above 4300
    tokens the 200-step line alone."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    m200 = a2 * seq_len + b2
    if seq_len > 4300:
        return float(m200)
    m10 = a1 * seq_len + b1
    slope = (m200 - m10) / 190.0
    return float(slope * num_steps + m200 - 200.0 * slope)
